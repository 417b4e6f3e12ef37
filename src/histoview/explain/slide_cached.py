"""The tile loop of a slide run through the feature cache: replay from it, or fill it.

:func:`run_slide_tiles` is what :func:`~histoview.explain.slide_run.explain_slide` calls in
place of :func:`~histoview.explain.slide_engine.run_tiles`. A processor takes part when it has
the cache hooks (today :class:`~histoview.explain.slide_amil.AmilSlideProcessor`):

* ``feature_parts()``: the JSON-able parts of the key that the processor decides (extractor
  hash, patch settings); this module adds the slide's content hash and the grid (region, pixel
  sizes, tile layout, the tissue tiles) and the precision;
* ``replay(entry, boxes)``: the :class:`~histoview.explain.slide_processor.TileResult` s of
  ``boxes`` from a cached entry;
* ``feature_sink``: set to a :class:`~histoview.explain.feature_cache.FeatureWriter` while the
  engine runs, so ``process`` streams each batch's embeddings to disk.

**Hit** (a complete entry for this key): the store gets each tile's results from ``replay`` in
the engine's batches (``batch_size`` tiles); the slide engine is not started (no tile is read, the
extractor never runs), ``progress`` and ``cancel`` work as in the engine, and ``finalize`` and
the outputs are the same code as an uncached run.

**Miss**: the engine runs with the sink set; the entry is committed only when this run
processed every tissue tile of the grid, none skipped and none cancelled (a resumed run, whose
earlier tiles' embeddings are gone, stores none); else the writer's folder is dropped.
Memory: the sink writes each batch to disk at once, so the cache adds only one batch's
embeddings to the run's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def resolve_cache(feature_cache):
    """``feature_cache`` of :func:`~histoview.explain.slide_run.explain_slide` as a
    :class:`~histoview.explain.feature_cache.FeatureCache`, or None: None = the default cache,
    ``"off"`` / False = none, a path or a FeatureCache."""
    from histoview.explain.feature_cache import FeatureCache

    if feature_cache is None or feature_cache is True:
        return FeatureCache()
    if feature_cache is False or (isinstance(feature_cache, str) and feature_cache == "off"):
        return None
    if isinstance(feature_cache, FeatureCache):
        return feature_cache
    if isinstance(feature_cache, str | os.PathLike):
        return FeatureCache(Path(feature_cache))
    raise ValueError(
        f"feature_cache={feature_cache!r}: give None (the default cache), 'off', a folder "
        "or a FeatureCache"
    )


def cache_key(path, grid, processor, *, amp: bool, device: str) -> tuple[str, dict[str, Any]]:
    """The entry key and its parts for this slide, grid and processor (module docstring)."""
    from histoview.explain.feature_cache import entry_key
    from histoview.io.content_hash import content_hash

    precision = "float32"
    if amp:
        precision = "cuda-float16" if str(device).startswith("cuda") else "cpu-bfloat16"
    tissue = np.ascontiguousarray(grid.tissue, bool)
    parts = {
        **processor.feature_parts(),
        "grid": {k: v for k, v in grid.describe().items() if k != "tissue_tiles"},
        "tissue_tiles_sha256": hashlib.sha256(tissue.tobytes()).hexdigest(),
        "precision": precision,
    }
    slide = content_hash(path)
    return entry_key(slide, parts), {"slide": slide, **parts}


def run_slide_tiles(
    path,
    grid,
    processor,
    store,
    *,
    feature_cache=None,
    level0_pixel_size_um: float,
    device: str = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    amp: bool | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
):
    """``(RunStats, note)``: the tiles of ``grid`` into ``store``, from the feature cache when
    it holds them, else through the engine (filling the cache); ``note`` (for the summary):
    ``{"used": False}`` or ``{"used": True, "key", "root", "hit", "stored"}`` (and
    ``"error"`` when the cache could not be read or written: the run goes on without it)."""
    from histoview.explain.slide_engine import run_tiles

    cache = resolve_cache(feature_cache) if hasattr(processor, "feature_parts") else None
    engine = dict(
        level0_pixel_size_um=level0_pixel_size_um,
        device=device,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        progress=progress,
        cancel=cancel,
    )
    if cache is None:
        return run_tiles(path, grid, processor, store, **engine), {"used": False}
    key, parts = cache_key(path, grid, processor, amp=bool(amp), device=device)
    note = {
        "used": True,
        "key": key,
        "root": str(cache.root.resolve()),
        "hit": False,
        "stored": False,
    }
    expected = grid.tissue_indices()
    try:
        entry = cache.get(key)
    except (ValueError, OSError) as exc:  # an unreadable entry: drop it, embed afresh
        note["error"] = str(exc)
        with contextlib.suppress(OSError):
            cache.remove(key)
        entry = None
    if entry is not None and np.array_equal(np.asarray(entry.tiles), expected):
        note["hit"] = True
        return _replay(entry, grid, processor, store, batch_size, progress, cancel), note
    try:
        writer = cache.writer(key, parts, processor.features)
    except OSError as exc:  # a cache that cannot be written never stops the explanation
        note["error"] = f"{cache.root}: not writable ({exc.strerror or exc}); nothing stored"
        return run_tiles(path, grid, processor, store, **engine), note
    processor.feature_sink = writer
    try:
        stats = run_tiles(path, grid, processor, store, **engine)
    except BaseException:
        writer.abort()
        raise
    finally:
        processor.feature_sink = None
    if stats.cancelled or stats.skipped or stats.done_now != len(expected):
        writer.abort()
    else:
        try:
            note["stored"] = writer.commit(expected) is not None
        except OSError as exc:  # a full disk: the entry is dropped, the outputs still come
            writer.abort()
            note["error"] = f"{cache.root}: the entry could not be written ({exc})"
    if writer.problem and "error" not in note:
        note["error"] = f"nothing stored: {writer.problem}"
    return stats, note


def _replay(entry, grid, processor, store, batch_size, progress, cancel):
    """The engine's loop with ``processor.replay`` in place of reading and processing."""
    from histoview.explain.slide_engine import RunStats

    todo = np.flatnonzero((grid.tissue & ~np.asarray(store.done[:], bool)).reshape(-1))
    total = int(grid.tissue.sum())
    stats = RunStats(total=total, done=total - len(todo), done_now=0, skipped=dict(store.skipped))
    earlier_s, start = store.elapsed_s, time.perf_counter()
    for i in range(0, len(todo), max(1, batch_size)):
        if cancel is not None and cancel():
            stats.cancelled = True
            break
        t0 = time.perf_counter()
        boxes = [grid.box(j) for j in todo[i : i + max(1, batch_size)]]
        results = processor.replay(entry, boxes)
        stats.compute_s += time.perf_counter() - t0
        elapsed = time.perf_counter() - start
        store.add_batch(boxes, results, {}, elapsed_s=earlier_s + elapsed)
        stats.done += len(boxes)
        stats.done_now += len(boxes)
        if progress is not None:
            handled = i + len(boxes)
            last = [tuple(float(v) for v in b.level0) for b in boxes]
            progress(
                {
                    "done": stats.done,
                    "total": stats.total,
                    "skipped": len(stats.skipped),
                    "elapsed_s": elapsed,
                    "remaining_s": elapsed / handled * (len(todo) - handled),
                    "tile_box": last[-1],
                    "tile_boxes": last,
                }
            )
    stats.elapsed_s = time.perf_counter() - start
    return stats
