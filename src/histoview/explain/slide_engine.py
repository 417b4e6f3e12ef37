"""The slide engine's run loop: tiles through a method's processor, into the working store.

:func:`run_tiles` takes a :class:`~histoview.explain.slide_grid.TileGrid`, a processor
(:mod:`histoview.explain.slide_processor`, the protocol every method implements) and an opened
:class:`~histoview.explain.slide_store.SlideStore`, and

* reads the tissue tiles not yet done in ``DataLoader`` workers
  (:mod:`histoview.explain.slide_tiles`; ``workers`` processes, 0 = in this one), so reading and
  decoding overlap compute;
* sends them through ``processor.process`` in batches of ``batch_size`` tiles, the first few
  smaller (:data:`FIRST_BATCHES`: 1, 2, 4 tiles, read in this thread while the workers start
  on the rest), so the first results reach the store, and a viewer filling in, after one tile
  rather than after a whole batch (on a CPU a 16-tile A-MIL batch takes seconds); inside
  ``torch.autocast`` when mixed precision is on (default: on CUDA, off on CPU; float16 on CUDA,
  bfloat16 on CPU);
* adds each batch to the store (kill-safe; the tiles are then done for good, so a cancelled or
  killed run resumes from them) and lists unreadable tiles as skipped;
* calls ``progress(dict)`` after each batch with ``done``, ``total``, ``skipped``,
  ``elapsed_s``, ``remaining_s`` (None until a batch has been timed), ``tile_box`` (the level-0
  ``(row, col, height, width)`` of the batch's last tile) and ``tile_boxes`` (all of them);
* polls ``cancel()`` between batches and stops when it says True.

It returns a :class:`RunStats`; :func:`histoview.explain.slide_run.explain_slide` is the whole
run (tissue mask, grid, store, this loop, ``finalize``, outputs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from histoview.explain.slide_grid import TileGrid
from histoview.explain.slide_processor import SlideProcessor, TileBox
from histoview.explain.slide_store import SlideStore

#: the sizes of a run's first batches (those below ``batch_size``), read in the run's own thread
#: while the loader's workers start on the rest: the first tile's results are in the store after
#: one tile's compute (measured with ``benchmarks/bench_slide_viewer.py``: a 16-tile first batch
#: put the first A-MIL tiles on screen 3-12 s after the click on a 2-core machine)
FIRST_BATCHES = (1, 2, 4)


@dataclass
class RunStats:
    """What one pass of :func:`run_tiles` did.

    Attributes:
        total: tissue tiles of the grid.
        done: tiles done, this run and earlier ones (resumed).
        done_now: tiles this run processed.
        skipped: unreadable tiles (index -> reason), all runs.
        cancelled: the run stopped at a cancel.
        elapsed_s: wall time of this run's loop (reading, compute, writing).
        compute_s: wall time spent in ``processor.process``.
        tiles_per_s: ``done_now / elapsed_s``.
    """

    total: int
    done: int
    done_now: int
    skipped: dict[int, str] = field(default_factory=dict)
    cancelled: bool = False
    elapsed_s: float = 0.0
    compute_s: float = 0.0

    @property
    def tiles_per_s(self) -> float:
        return self.done_now / self.elapsed_s if self.elapsed_s > 0 else 0.0


def resolve_device(device: str | None) -> str:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...), default CUDA when present; asking for
    CUDA without it is a one-line ValueError."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (use --device cpu)")
    return str(device)


def autocast(device: str, amp: bool | None):
    """The mixed-precision context of a batch: ``torch.autocast`` (float16 on CUDA, bfloat16
    on CPU) when ``amp`` is on (None: on for CUDA, off for CPU), else nothing."""
    import torch

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if amp is None:
        amp = kind == "cuda"
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.float16 if kind == "cuda" else torch.bfloat16)


def run_tiles(
    path,
    grid: TileGrid,
    processor: SlideProcessor,
    store: SlideStore,
    *,
    level0_pixel_size_um: float,
    device: str = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    amp: bool | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RunStats:
    """Process every tissue tile of ``grid`` not yet done in ``store`` (module docstring)."""
    from histoview.explain.slide_tiles import SlideTiles, tile_loader

    if processor.tile_size != grid.tile_size or processor.overlap != grid.overlap:
        raise ValueError(
            f"the grid's tiles ({grid.tile_size} px, overlap {grid.overlap}) are not the "
            f"processor's ({processor.tile_size} px, overlap {processor.overlap})"
        )
    todo_mask = grid.tissue & ~np.asarray(store.done[:], bool)
    total = int(grid.tissue.sum())
    done = total - int(todo_mask.sum())
    boxes = [grid.box(i) for i in np.flatnonzero(todo_mask.reshape(-1))]
    stats = RunStats(total=total, done=done, done_now=0, skipped=dict(store.skipped))
    if not boxes:
        return stats
    sizes = first_batches(batch_size, len(boxes))
    head = sum(sizes)
    dataset, rest = (
        SlideTiles(
            path,
            part,
            tile_size=grid.tile_size,
            pixel_size_um=grid.pixel_size_um,
            level0_pixel_size_um=level0_pixel_size_um,
            prepare_tile=processor.prepare_tile,
        )
        for part in (boxes[:head], boxes[head:])
    )
    earlier_s = store.elapsed_s
    start = time.perf_counter()
    handled = 0  # tiles of this run's list handled (done or skipped)
    trim = _HeapTrimmer()
    # the workers start (and read ahead) at once, while this thread does the first batches
    later = iter(tile_loader(rest, batch_size=batch_size, workers=workers) if len(rest) else ())
    batches = _batches(dataset, sizes, later)
    try:
        while True:
            if cancel is not None and cancel():
                stats.cancelled = True
                break
            batch = next(batches, None)
            if batch is None:
                break
            t0 = time.perf_counter()
            results = []
            if batch.boxes:
                tiles = np.asarray(batch.tiles)  # a tensor from the workers: no copy
                with autocast(device, amp):
                    results = processor.process(tiles, batch.boxes, batch.prepared)
                if len(results) != len(batch.boxes):
                    raise ValueError(
                        f"{processor.method}: process gave {len(results)} results for "
                        f"{len(batch.boxes)} tiles"
                    )
            stats.compute_s += time.perf_counter() - t0
            elapsed = time.perf_counter() - start
            store.add_batch(batch.boxes, results, batch.skipped, elapsed_s=earlier_s + elapsed)
            stats.done += len(batch.boxes)
            stats.done_now += len(batch.boxes)
            stats.skipped.update(batch.skipped)
            for box in batch.boxes:  # read on this try: no longer skipped
                stats.skipped.pop(box.index, None)
            handled += len(batch.boxes) + len(batch.skipped)
            trim()
            if progress is not None:
                progress(_progress_event(stats, handled, len(boxes), elapsed, batch))
    finally:
        del batches, later  # shuts the workers down, also on an error or a kill signal
        dataset.close()
        rest.close()
    stats.elapsed_s = time.perf_counter() - start
    return stats


def first_batches(batch_size: int, todo: int) -> list[int]:
    """The sizes of the batches read in the run's thread before the loader's (module
    docstring): :data:`FIRST_BATCHES` below ``batch_size``, cut to the ``todo`` tiles."""
    sizes, left = [], int(todo)
    for n in FIRST_BATCHES:
        if n >= batch_size or left <= 0:
            break
        sizes.append(min(n, left))
        left -= sizes[-1]
    return sizes


def _batches(dataset, sizes: list[int], later):
    """The first ``sizes`` tiles of ``dataset`` read here, batch by batch, then ``later``'s."""
    from histoview.explain.slide_tiles import collate_tiles

    i = 0
    for n in sizes:
        yield collate_tiles([dataset[j] for j in range(i, i + n)])
        i += n
    yield from later


def _malloc_trim():
    """glibc's ``malloc_trim``, or None off glibc (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class _HeapTrimmer:
    """Hands freed heap memory back to the system every ``every`` batches (0.2 ms a call).

    Batches allocate tensors of varying size (the tissue patches of each batch); glibc keeps
    what they free in its heap, and the resident memory grew by ~0.8 MB per tile (1.46 GiB
    after 900 A-MIL tiles), flat with ``malloc_trim(0)`` after each batch (measured with
    ``benchmarks/bench_slide_engine.py``)."""

    def __init__(self, every: int = 1):
        self.every, self.count, self.trim = every, 0, _malloc_trim()

    def __call__(self) -> None:
        self.count += 1
        if self.trim is not None and self.count % self.every == 0:
            self.trim(0)


def _progress_event(stats: RunStats, handled: int, todo: int, elapsed: float, batch) -> dict:
    last: list[TileBox] = [*batch.boxes, *batch.skipped_boxes]
    boxes = [tuple(float(v) for v in b.level0) for b in last]
    remaining = elapsed / handled * (todo - handled) if handled else None
    return {
        "done": stats.done,
        "total": stats.total,
        "skipped": len(stats.skipped),
        "elapsed_s": elapsed,
        "remaining_s": remaining,
        "tile_box": boxes[-1] if boxes else None,
        "tile_boxes": boxes,
    }


def forward_throughput(
    processor: SlideProcessor,
    tiles: np.ndarray,
    boxes: list[TileBox],
    *,
    batch_size: int = 16,
    device: str = "cpu",
    amp: bool | None = None,
    prepared: list[dict] | None = None,
) -> float:
    """Tiles per second of ``processor.process`` alone on ``tiles`` already in memory (the
    benchmark's "pure forward" figure, against which a slide run's throughput is compared)."""
    import torch

    prepared = prepared or [{} for _ in boxes]
    start = time.perf_counter()
    for i in range(0, len(boxes), batch_size):
        sl = slice(i, i + batch_size)
        with autocast(device, amp):
            processor.process(tiles[sl], boxes[sl], prepared[sl])
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return len(boxes) / max(time.perf_counter() - start, 1e-9)
