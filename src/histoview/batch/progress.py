"""Terminal progress of a batch: slides done / total, slides per hour, time left.

One plain line per finished slide (so it reads the same in a terminal, a log file or a SLURM
job's output, with or without a TTY)::

    [#####---------------]  5/20 slides  s05: done (benign) 41.2 s  310 slides/h  ~3 min left

Throughput counts the slides finished in this run since the first task was submitted (the
skipped ones are not work); the time left is the slides still to run at that rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

BAR = 20


class Progress:
    """Counts finished slides and prints a line for each (``write``: default stdout)."""

    def __init__(self, total: int, *, done: int = 0, write: Callable[[str], None] | None = None):
        self.total, self.done, self.ran = total, done, 0
        self.start = time.monotonic()
        self.write = write or (lambda line: print(line, file=sys.stdout, flush=True))

    def rate_per_hour(self) -> float | None:
        elapsed = time.monotonic() - self.start
        return self.ran / elapsed * 3600 if self.ran and elapsed > 0 else None

    def remaining_s(self) -> float | None:
        rate = self.rate_per_hour()
        return (self.total - self.done) / rate * 3600 if rate else None

    def line(self, what: str) -> str:
        filled = round(BAR * self.done / self.total) if self.total else BAR
        bar = "#" * filled + "-" * (BAR - filled)
        width = len(str(self.total))
        parts = [f"[{bar}] {self.done:>{width}}/{self.total} slides", what]
        rate, left = self.rate_per_hour(), self.remaining_s()
        if rate is not None:
            parts.append(f"{rate:.0f} slides/h")
        if left is not None and self.done < self.total:
            parts.append(f"~{_duration(left)} left")
        return "  ".join(parts)

    def finished(self, record: dict) -> None:
        """A slide finished in this run (done or failed)."""
        self.done += 1
        self.ran += 1
        status = record.get("status")
        if status == "done":
            pred = f" ({record['prediction']})" if record.get("prediction") else ""
            what = f"{record['name']}: done{pred} {record.get('time_s') or 0:.1f} s"
        else:
            what = f"{record['name']}: {status}: {record.get('error')}"
        self.write(self.line(what))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
