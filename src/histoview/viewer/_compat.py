"""Work-arounds for the environments napari runs in."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path


def avoid_triton_llvm_clash() -> None:
    """Keep torch from importing Triton when another LLVM is already loaded in the process.

    Software OpenGL (Mesa llvmpipe: Xvfb, virtual machines, remote desktops) loads
    ``libLLVM`` for napari's canvas; importing Triton afterwards (torch does so on the
    first optimizer, through ``torch._dynamo``) crashes the process with a segmentation
    fault. Training never compiles kernels, so Triton is marked absent for this session.
    """
    if "triton" in sys.modules:
        return
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return
    if "libLLVM" in maps:
        sys.modules["triton"] = None  # ``import triton`` now raises ImportError


class SignalQueue:
    """Handle a worker's signals one at a time, in order.

    napari's progress bar processes Qt events while it updates, so a later signal could
    otherwise be handled in the middle of an earlier one. A handler's exception goes to
    ``on_error`` (shown in the widget), never into napari.
    """

    def __init__(self, on_error: Callable[[str], None]):
        self._inbox: deque = deque()
        self._draining = False
        self._on_error = on_error

    def post(self, handler: Callable, *args) -> None:
        self._inbox.append((handler, args))
        if self._draining:
            return
        self._draining = True
        try:
            while self._inbox:
                handler, args = self._inbox.popleft()
                try:
                    handler(*args)
                except Exception as exc:
                    self._on_error(f"{type(exc).__name__}: {exc}")
        finally:
            self._draining = False


def grid_of(viewer):
    """napari's grid model (``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def canvas_size_event(viewer):
    """The event napari emits when the canvas changes size (``viewer.canvas.events.size``,
    napari 0.9), or None on a napari without it."""
    events = getattr(getattr(viewer, "canvas", None), "events", None)
    return getattr(events, "size", None)
