"""How many cores torch computes on while the viewer is open: all but one while an explanation
runs on the CPU, so the one left keeps the event loop running (napari draws, slices and
inserts layers on the main thread); all of them for training.

On 2 cores, torch on both beside the viewer made it freeze about twice as long and a whole
slide no faster (benchmarks/bench_slide_viewer.py); on one image, "Run all methods" again
froze 101-214 ms instead of 276-406 ms and took 1.45 s instead of 1.7-2.0 s, its first run
and each method's click the same within noise (benchmarks/bench_viewer.py, medians of 3-6
runs before its activity-spinner fix, docs/benchmarks.md).

Torch's OpenMP thread count belongs to the thread that sets it, and a thread that first
computes takes the process-wide value of that moment. So the count is set in the worker thread
around each step of its generator (:func:`torch_threads_per_step`) and restored before each
yield, never left changed while the worker waits; a worker that wants every core sets that
too, in case its pool thread first computed while another worker had one core fewer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

_LOCK = threading.Lock()
#: the process's torch thread count before this module first changed it
_ORIGINAL: int | None = None


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def original_threads() -> int:
    """Torch's thread count as the process had it (``OMP_NUM_THREADS``, or torch's default)."""
    global _ORIGINAL
    import torch

    with _LOCK:
        if _ORIGINAL is None:
            _ORIGINAL = torch.get_num_threads()
        return _ORIGINAL


def threads_for(leave_one: bool) -> int:
    """The thread count for a step: one core fewer than the process's count (at least one)
    when ``leave_one``, else the process's count."""
    n = original_threads()
    return max(1, min(n, cores() - 1)) if leave_one else n


def _on_cpu(device) -> bool:
    from histoview.explain.slide_engine import resolve_device

    return resolve_device(device) == "cpu"


@contextlib.contextmanager
def torch_threads(leave_one: bool = True, device=None):
    """Within the block, torch computes in this thread on :func:`threads_for` ``(leave_one)``
    threads; afterwards on the process's count. Nothing changes when ``device`` (None: CUDA
    when present) is not the CPU."""
    if not _on_cpu(device):
        yield
        return
    import torch

    torch.set_num_threads(threads_for(leave_one))
    try:
        yield
    finally:
        torch.set_num_threads(original_threads())


def torch_threads_per_step(work, *, leave_one: bool = True, device=None):
    """``work``, a generator function for a napari worker, with every step (the code between
    two yields) run under :func:`torch_threads`; values sent in and the return value pass
    through."""

    @functools.wraps(work)
    def run(*args, **kwargs):
        gen = work(*args, **kwargs)
        sent = None
        while True:
            with torch_threads(leave_one, device):
                try:
                    item = gen.send(sent)
                except StopIteration as stop:
                    return stop.value
            sent = yield item

    return run
