"""Explain a whole slide, or a region of it, at the model's pixel size: ``explain_slide``.

What ``histoview explain SLIDE`` runs when the slide at the model's pixel size does not fit in
one piece (or with ``--whole-slide`` / ``--region``), and what the napari side runs in a worker:

1. the model (the given checkpoint, the newest in the library, or the method's demo weights)
   and its pixel size (the checkpoint's ``pixel_size_um``; without one, the slide's level 0);
2. the slide's level-0 pixel size by the trusted-inputs policy
   (:func:`~histoview.models.inputs.resolve_pixel_size`: ``pixel_size_um`` given, else the
   file's trusted calibration, else an estimate from the nuclei of a tissue field read at level
   0; an unreliable estimate raises :class:`~histoview.models.inputs.PixelSizeError`);
3. the tissue mask (:func:`~histoview.preprocessing.tissue.detect_tissue`), the region
   (:func:`~histoview.explain.slide_grid.parse_region`, cut to the slide) and the tile grid;
4. the engine (:func:`~histoview.explain.slide_engine.run_tiles`) into the working store
   ``<stem>.<method>.zarr/`` in ``out_dir`` (a region's ``<stem>`` names the region too:
   :func:`run_stem`), resumed when a cancelled or killed run with the
   same settings left one;
5. the processor's ``finalize`` and the outputs, each whole or absent
   (:mod:`histoview.io.files`): ``<stem>.<method>.ome.tif`` (pyramidal OME-TIFF at the map's
   pixel size, placed on the slide), ``<stem>.<method>.json`` (the summary) and
   ``<stem>.tissue.ome.tif`` (the tissue mask); then the store is removed.

Bad input gives one line naming the file: an unknown pixel size that cannot be estimated, a
region outside the slide, a model pixel size finer than level 0, no tissue. A tile that cannot
be decoded is skipped, the run goes on, and the summary lists it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.slide_grid import MIN_TISSUE, clip_region, make_grid, parse_region
from histoview.explain.slide_outputs import free_stem, uniform_prediction, write_outputs
from histoview.explain.slide_processor import SlideContext

#: batch size (tiles) and loader processes when the caller gives none
DEFAULT_BATCH_SIZE = 16
DEFAULT_WORKERS = 2
#: a level-0 field this big (pixels) is read to estimate an unknown pixel size from nuclei
ESTIMATE_FIELD = 1024


@dataclass
class SlideResult:
    """What :func:`explain_slide` did.

    Attributes:
        method: the method's name.
        summary: the JSON summary (also in ``outputs["json"]``); partial when cancelled.
        outputs: ``"map"``, ``"json"``, ``"tissue"`` (and ``"map:<name>"`` for further maps)
            -> the files written; empty when cancelled.
        store_path: the working store (kept when cancelled, so a new run resumes).
        cancelled: the run stopped at a cancel; nothing was written but the store.
        stats: the engine's :class:`~histoview.explain.slide_engine.RunStats`.
        store: the opened :class:`~histoview.explain.slide_store.SlideStore` while it exists
            (the map array, its pixel size and the done-mask, for a viewer filling in).
        tissue: the :class:`~histoview.preprocessing.tissue.TissueMask` used (to reuse).
    """

    method: str
    summary: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    store_path: Path | None = None
    cancelled: bool = False
    stats: Any = None
    store: Any = None
    tissue: Any = None


def fits_in_one_piece(src, pixel_size_um: float, region=None, *, limit: int | None = None) -> bool:
    """Whether the slide (or ``region``, level-0 (row, col, h, w)) at ``pixel_size_um`` has at
    most ``limit`` pixels (default :data:`histoview.io.image.MAX_LEVEL_PIXELS`) and so has
    the pyramid level the one-piece path would read, so it explains it without coarsening
    (a slide of unknown pixel size: whether level 0 fits)."""
    from histoview.io.image import MAX_LEVEL_PIXELS

    limit = MAX_LEVEL_PIXELS if limit is None else limit
    p0 = src.pixel_size_um
    if not p0:  # unknown: the one-piece path estimates it, if level 0 fits at all
        return src.shape[0] * src.shape[1] <= limit
    h, w = (region[2], region[3]) if region is not None else src.shape[:2]
    scale = pixel_size_um / p0
    if (h / scale) * (w / scale) > limit:
        return False
    level = src.best_level_for(pixel_size_um)
    return src.levels[level].height * src.levels[level].width <= limit


def needs_slide_engine(
    path: str | os.PathLike,
    methods,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pixel_size_um: float | None = None,
) -> bool:
    """Whether ``histoview explain`` should explain ``path`` tile by tile: some method of
    ``methods`` with a slide processor has a model whose pixel size the image does not fit at in
    one piece (:func:`fits_in_one_piece`; the model's pixel size from its checkpoint's
    sidecar, nothing loaded)."""
    from histoview.explain.methods import get_method
    from histoview.explain.run import checkpoint_for_method
    from histoview.io import open_image
    from histoview.models.checkpoint import CheckpointError, read_metadata

    with open_image(path, pixel_size_um=pixel_size_um) as src:
        for method in methods:
            if get_method(method).slide is None:
                continue
            try:
                ckpt = checkpoint_for_method(method, model=model, checkpoint=checkpoint)
            except CheckpointError:
                continue  # the one-piece path says what is missing
            mpp = read_metadata(ckpt).get("pixel_size_um") or src.pixel_size_um
            if mpp and not fits_in_one_piece(src, float(mpp)):
                return True
    return False


def resolve_slide_pixel_size(src, pixel_size_um: float | None = None):
    """The slide's level-0 :class:`~histoview.models.inputs.PixelSizeChoice` (module docstring,
    step 2); ``src`` gets it (:meth:`~histoview.io.image.ImageSource.set_pixel_size`) when it
    was given or estimated."""
    from histoview.models.inputs import PixelSizeError, resolve_pixel_size

    if pixel_size_um is not None:
        src.set_pixel_size(pixel_size_um)
        return resolve_pixel_size(pixel_size_um, source="user")
    src.check_square_pixels()
    if src.pixel_size_um is not None:
        return resolve_pixel_size(src.pixel_size_um, source=src.pixel_size_source or "file")
    try:
        choice = resolve_pixel_size(None, image=_tissue_field(src))
    except PixelSizeError as exc:
        raise PixelSizeError(f"{src.path}: {exc}") from None
    src.set_pixel_size(choice.pixel_size_um)
    return choice


def _tissue_field(src) -> np.ndarray:
    """A level-0 field of :data:`ESTIMATE_FIELD` pixels centred on the slide's most tissue-rich
    spot, found on the coarsest level (no pixel size needed)."""
    from histoview.io.rgb import to_rgb8
    from histoview.preprocessing.patches import glass_fraction

    level = src.n_levels - 1
    low = to_rgb8(src.read_level(level))
    cell = max(1, int(round(ESTIMATE_FIELD / src.levels[level].downsample)))
    rows, cols = max(1, low.shape[0] // cell), max(1, low.shape[1] // cell)
    best, best_rc = 2.0, (0, 0)
    for i in range(rows):
        for j in range(cols):
            block = low[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
            frac = float(glass_fraction(block[None])[0])
            if frac < best:
                best, best_rc = frac, (i, j)
    ds = src.levels[level].downsample
    r, c = (int(v * cell * ds) for v in best_rc)
    return to_rgb8(src.read_region(0, (r, c), (ESTIMATE_FIELD, ESTIMATE_FIELD)))


def explain_slide(
    path: str | os.PathLike,
    method: str,
    *,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    model: str | None = None,
    pixel_size_um: float | None = None,
    region: str | tuple[float, float, float, float] | None = None,
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    amp: bool | None = None,
    target_class=None,
    options: dict[str, Any] | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    min_tissue: float = MIN_TISSUE,
    tissue=None,
    keep_store: bool = False,
    write_tissue: bool = True,
    report: Callable[[str], None] | None = None,
    feature_cache=None,
) -> SlideResult:
    """Explain the slide at ``path`` with ``method`` tile by tile (module docstring).

    Args:
        path: the slide file.
        method: a registry method with a slide processor (``Method.slide``).
        out_dir: where the outputs and the working store go (checked before any work).
        checkpoint, model: the weights (default: the newest of ``model`` in the library, else
            the method's demo weights).
        pixel_size_um: the slide's level-0 um/px, overriding the file's.
        region: ``"x,y,w,h"`` (level-0 pixels, or micrometres with ``um``) or a level-0
            ``(row, col, height, width)``; None: the whole slide.
        device, batch_size, workers, amp: the engine's (default device: CUDA when present).
        target_class: class name or index to explain (methods that are class-specific).
        options: method options.
        progress, cancel: the engine's callbacks (:mod:`histoview.explain.slide_engine`).
        resume: resume a store left with the same settings (False: start afresh).
        overwrite: replace existing outputs (else they get numbered names).
        min_tissue: smallest tissue fraction of a tile that is processed.
        tissue: a :class:`~histoview.preprocessing.tissue.TissueMask` of this slide to use
            instead of detecting one.
        keep_store: keep the working store after the outputs are written.
        write_tissue: write ``<stem>.tissue.ome.tif`` (False: a run of another method on the
            same slide wrote it).
        report: called with one line per step (default: nothing).
        feature_cache: where a method with cache hooks (A-MIL) keeps and finds its patch
            embeddings (:mod:`histoview.explain.slide_cached`): None = the default cache
            (:func:`~histoview.explain.feature_cache.default_cache_dir`), ``"off"`` / False =
            none, a folder or a :class:`~histoview.explain.feature_cache.FeatureCache`.
    """
    from histoview.explain.methods import get_method
    from histoview.explain.run import _class_index, load_for_method
    from histoview.explain.slide_cached import run_slide_tiles
    from histoview.explain.slide_engine import resolve_device
    from histoview.explain.slide_store import open_store
    from histoview.io import open_image
    from histoview.io.files import check_writable_dir, output_stem
    from histoview.preprocessing.tissue import NoTissueError, detect_tissue

    say = report or (lambda line: None)
    out_dir = check_writable_dir(out_dir)
    spec = get_method(method)
    if spec.slide is None:
        raise ValueError(f"method {method!r} does not run on whole slides")
    device = resolve_device(device)
    start = time.perf_counter()
    with open_image(path) as src:
        choice = resolve_slide_pixel_size(src, pixel_size_um)
        p0, shape0 = choice.pixel_size_um, tuple(src.shape[:2])
        net, meta, sha = load_for_method(method, model=model, checkpoint=checkpoint, device=device)
        model_mpp = float(meta.get("pixel_size_um") or p0)
        mpp_source = "checkpoint" if meta.get("pixel_size_um") else "slide level 0"
        if model_mpp < p0 / 1.01:
            raise ValueError(
                f"{src.path}: the model's pixel size {model_mpp:.4g} um/px is finer than the "
                f"slide's level 0 ({p0:.4g} um/px, {choice.describe()}); histoview does not "
                "invent detail: use a model trained at a coarser pixel size, or check "
                "--pixel-size"
            )
        if isinstance(region, str):
            region = parse_region(region, level0_pixel_size_um=p0, path=src.path)
        box = clip_region(region, shape0, path=src.path)
        if tissue is None:
            say("tissue: detecting")
            tissue = detect_tissue(src)
    ctx = SlideContext(
        pixel_size_um=model_mpp,
        device=device,
        amp=bool(amp) if amp is not None else device.startswith("cuda"),
        target_class=_class_index(target_class, tuple(meta["classes"])),
        options=dict(options or {}),
    )
    processor = spec.slide(net, meta, sha, ctx)
    grid = make_grid(
        box,
        pixel_size_um=model_mpp,
        level0_pixel_size_um=p0,
        tile_size=processor.tile_size,
        overlap=processor.overlap,
        tissue=tissue,
        min_tissue=min_tissue,
    )
    where = "the region" if region is not None else "the slide"
    if not grid.tissue.any():
        raise NoTissueError(
            path, f"no tissue in {where} (tissue mask at {tissue.pixel_size_um:g} um/px)"
        )
    stem = run_stem(path, box if region is not None else None)
    stat = Path(path).stat()
    settings = {
        "method": method,
        "model": meta["model"],
        "checkpoint_sha256": sha,
        "slide": {"path": str(Path(path).resolve()), "bytes": stat.st_size},
        "slide_mtime_ns": stat.st_mtime_ns,
        "level0_pixel_size_um": p0,
        "target_class": ctx.target_class,
        "options": ctx.options,
        "min_tissue": min_tissue,
        "processor": processor.settings(),
    }
    store_path = working_store(out_dir, path, method, box if region is not None else None)
    store, how = open_store(
        store_path,
        grid,
        settings=settings,
        maps=processor.maps,
        extras=processor.extras,
        resume=resume,
    )
    say(f"store: {store_path} ({how}); {int(grid.tissue.sum())} tissue tiles of {grid.n_tiles}")
    stats, cache_note = run_slide_tiles(
        path,
        grid,
        processor,
        store,
        feature_cache=feature_cache,
        level0_pixel_size_um=p0,
        device=device,
        batch_size=batch_size,
        workers=workers,
        amp=ctx.amp,
        progress=progress,
        cancel=cancel,
    )
    summary = {
        "method": method,
        "method_title": spec.title,
        "source_path": str(Path(path).resolve()),
        "model": meta["model"],
        "classes": list(meta["classes"]),
        "checkpoint_sha256": sha,
        "synthetic": bool(meta.get("synthetic", False)),
        "pixel_size_um": model_mpp,
        "pixel_size_source": mpp_source,
        "slide_pixel_size_um": p0,
        "slide_pixel_size_source": choice.source,
        "slide_pixel_size": choice.describe(),
        "region": _region_summary(region, box, p0),
        "device": device,
        "mixed_precision": ctx.amp,
        "batch_size": batch_size,
        "workers": workers,
        "grid": grid.describe(),
        "tissue": tissue.describe() if hasattr(tissue, "describe") else None,
        "tiles_total": stats.total,
        "tiles_done": stats.done,
        "tiles_skipped": len(stats.skipped),
        "skipped_tiles": [
            {"index": i, "level0_box": list(grid.box(i).level0), "reason": reason}
            for i, reason in sorted(stats.skipped.items())
        ],
        "resumed": how == "resumed",
        "tiles_this_run": stats.done_now,
        "tiles_per_s": round(stats.tiles_per_s, 3),
        "compute_s": round(stats.compute_s, 3),
        "feature_cache": cache_note,
        "notice": _notice(meta),
    }
    if stats.cancelled:
        summary["time_s"] = round(time.perf_counter() - start, 3)
        say(f"cancelled: {stats.done} of {stats.total} tiles done; run again to resume")
        return SlideResult(method, summary, {}, store_path, True, stats, store, tissue)
    # every file of this run under one name: a rerun's are all x-1.<method>.*, not each
    # numbered alone (x-1.graph.ome.tif beside x.graph-1.nuclei.npz)
    stem = store.output_stem = free_stem(out_dir, stem, method, overwrite)
    outcome = processor.finalize(store)
    summary.update(outcome.summary)
    uniform_prediction(summary)
    summary["time_s"] = round(time.perf_counter() - start, 3)
    summary["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    mask = tissue if write_tissue else None
    slide_stem = output_stem(path)
    if region is not None and (out_dir / f"{slide_stem}.tissue.ome.tif").exists():
        mask = None  # the slide's mask, written by an earlier run: not a numbered copy per region
    outputs = write_outputs(
        out_dir, stem, method, outcome, summary, mask, overwrite, region, slide_stem
    )
    store.mark_finished(summary)
    if not keep_store:
        shutil.rmtree(store_path, ignore_errors=True)
        store = None
    return SlideResult(method, summary, outputs, store_path, False, stats, store, tissue)


def run_stem(path, box=None) -> str:
    """What a run's outputs and working store are named after: the slide's stem, and for a
    region (``box``, level-0 (row, col, height, width) cut to the slide) the region too,
    ``<stem>.region-x<col>-y<row>-<width>x<height>``: a region run then neither resumes nor,
    once done, removes the store of a cancelled whole-slide run, and its map is not a
    numbered copy of the slide's."""
    from histoview.io.files import output_stem

    stem = output_stem(path)
    if box is None:
        return stem
    r, c, h, w = (int(round(v)) for v in box)
    return f"{stem}.region-x{c}-y{r}-{w}x{h}"


def working_store(out_dir, path, method: str, box=None) -> Path:
    """Where a run of ``method`` on ``path`` (``box``: a region, as for :func:`run_stem`) keeps
    its working store in ``out_dir``; the slide dock reads it while the run goes."""
    return Path(out_dir) / f"{run_stem(path, box)}.{method}.zarr"


def _region_summary(region, box, p0: float) -> dict | None:
    if region is None:
        return None
    r, c, h, w = box
    return {
        "level0_pixels": {"x": c, "y": r, "width": w, "height": h},
        "um": {"x": c * p0, "y": r * p0, "width": w * p0, "height": h * p0},
    }


def _notice(meta: dict) -> str:
    from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE

    return RESEARCH_NOTICE + (f" {SYNTHETIC_NOTICE}" if meta.get("synthetic") else "")
