"""Long jobs (training, evaluation, reproduction) are generators of progress events."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def drain(
    gen: Generator[dict[str, Any], None, Any], progress: Callable[[dict], None] | None = None
):
    """Run an event generator to its end, handing each event to ``progress``; return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)
