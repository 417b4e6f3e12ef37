"""What the slide dock shows while a whole-slide run goes: snapshots of its working store.

A whole-slide run (:func:`histoview.explain.slide_run.explain_slide`) merges its maps into a
zarr store on disk as tiles finish (:mod:`histoview.explain.slide_store`). The slide dock reads
that store from a worker thread every fraction of a second and hands the main thread a
:class:`Snapshot`: the map as it stands (colour-ready values, NaN where no tile has written
yet), the tiles done and skipped, and where all of it lies on the slide. The main thread only
swaps these arrays into its layers, so the viewer keeps panning while the slide fills in.

Geometry (:func:`placement`): napari puts a layer's pixel (i, j) *centre* at
``translate + (i, j) * scale`` in world coordinates. A map whose pixel covers ``f`` level-0
pixels and whose top-left corner is level-0 pixel ``origin`` therefore lies on a slide layer
(``scale`` s, ``translate`` t per level-0 pixel) at ``scale = f * s`` and
``translate = t + (origin - 0.5 + f / 2) * s``: the corners of map and slide pixels coincide.
No napari or Qt here: this module is plain data, testable without a display.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the part of the map values the colour scale spans while a run goes (robust to outliers)
LIVE_PERCENTILES = (1.0, 99.5)


@dataclass(frozen=True)
class Snapshot:
    """One look at a running (or finished) store.

    Attributes:
        values: (h, w) float32 map as it stands, NaN where no tile has written; None when the
            store has no map yet.
        map_name: which map of the store ``values`` is.
        contrast: (low, high) colour limits for ``values`` (robust percentiles).
        map_factor: level-0 pixels per map pixel.
        tiles: (rows, cols) float32: 1 for tiles done, NaN elsewhere.
        tile_factor: level-0 pixels per tile-grid cell (the tile stride).
        origin: (row, col) of the region's top-left corner in level-0 pixels.
        done, total, skipped: tiles done, tiles to do, tiles skipped (unreadable).
        finished: the store says the run finished.
    """

    values: np.ndarray | None
    map_name: str | None
    contrast: tuple[float, float]
    map_factor: float
    tiles: np.ndarray
    tile_factor: float
    origin: tuple[float, float]
    done: int
    total: int
    skipped: int
    finished: bool
    progress: dict = field(default_factory=dict)


def read_snapshot(
    store_path: str | os.PathLike, map_name: str | None = None, progress: dict | None = None
) -> Snapshot | None:
    """A :class:`Snapshot` of the store at ``store_path`` (None while it does not exist yet).

    ``map_name`` picks the map (default: the first the method declares); the store is opened
    read-only and never changed, so this runs beside the engine writing it (values may lag one
    batch behind)."""
    import zarr

    path = Path(store_path)
    if not (path / "zarr.json").exists():
        return None
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    grid, maps = attrs.get("grid"), attrs.get("maps") or []
    if not grid or "done" not in group:
        return None
    names = [m["name"] for m in maps]
    name = map_name if map_name in names else (names[0] if names else None)
    scale = float(grid["pixel_size_um"]) / float(grid["level0_pixel_size_um"])
    done_cells = np.asarray(group["done"][:], bool)
    tiles = np.where(done_cells, np.float32(1), np.float32(np.nan)).astype(np.float32)
    values, contrast, factor = None, (0.0, 1.0), scale
    if name is not None:
        spec = maps[names.index(name)]
        factor = scale * float(spec.get("factor", 1))
        final = f"final/{name}"
        if attrs.get("state") == "finished" and final in group:
            values = _first_channel(np.asarray(group[final][:], np.float32))
            contrast = (0.0, 1.0)
        else:
            acc = np.asarray(group[f"maps/{name}/acc"][:], np.float32)
            weight = np.asarray(group[f"maps/{name}/weight"][:], np.float32)
            values = _blend(_first_channel(acc), weight)
            contrast = live_contrast(values)
    progress = dict(progress or {})
    total = int(progress.get("total") or grid.get("tissue_tiles") or done_cells.size)
    return Snapshot(
        values=values,
        map_name=name,
        contrast=contrast,
        map_factor=factor,
        tiles=tiles,
        tile_factor=scale * (int(grid["tile_size"]) - int(grid["overlap"])),
        origin=(float(grid["region"][0]), float(grid["region"][1])),
        done=int(done_cells.sum()),
        total=total,
        skipped=len(attrs.get("skipped") or {}),
        finished=attrs.get("state") == "finished",
        progress=progress,
    )


def _first_channel(a: np.ndarray) -> np.ndarray:
    return a[..., 0] if a.ndim == 3 else a


def _blend(acc: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out = np.full(acc.shape, np.nan, np.float32)
    np.divide(acc, weight, out=out, where=weight > 0)
    return out


def live_contrast(values: np.ndarray) -> tuple[float, float]:
    """Colour limits spanning :data:`LIVE_PERCENTILES` of the values written so far."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, LIVE_PERCENTILES))
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1.0)
    return (lo, hi)


def placement(
    factor: float,
    origin: tuple[float, float],
    slide_scale: tuple[float, float],
    slide_translate: tuple[float, float] = (0.0, 0.0),
) -> dict:
    """``{"scale", "translate"}`` for a layer whose pixel covers ``factor`` level-0 pixels from
    level-0 pixel ``origin`` (row, col), on a slide layer with ``slide_scale`` /
    ``slide_translate`` (module docstring)."""
    sy, sx = (float(v) for v in slide_scale[-2:])
    ty, tx = (float(v) for v in slide_translate[-2:])
    oy, ox = origin
    return {
        "scale": (factor * sy, factor * sx),
        "translate": (ty + (oy - 0.5 + factor / 2) * sy, tx + (ox - 0.5 + factor / 2) * sx),
    }


def tissue_display(mask: np.ndarray) -> np.ndarray:
    """The tissue mask as the dock shows it: float32, 1 on the tissue's outline (a pixel of
    tissue beside glass), :data:`TISSUE_FILL` inside, 0 on glass. A fill alone, faint enough
    to keep the stain readable, is hard to see on pink tissue; the outline says where the
    detector drew the line, as a tissue annotation does in QuPath."""
    tissue = np.asarray(mask, bool)
    padded = np.pad(tissue, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & tissue
    out = np.where(tissue, TISSUE_FILL, 0.0).astype("float32")
    out[tissue & ~inner] = 1.0
    return out


#: the value inside the tissue in :func:`tissue_display` (its outline is 1)
TISSUE_FILL = 0.2


def world_box_to_region(
    box: tuple[tuple[float, float], tuple[float, float]],
    slide_scale: tuple[float, float],
    slide_translate: tuple[float, float],
    level0_shape: tuple[int, int],
) -> tuple[float, float, float, float] | None:
    """(row, col, height, width) in level-0 pixels of a world rectangle ``((y0, x0), (y1, x1))``
    cut to the slide; None when it misses the slide."""
    (y0, x0), (y1, x1) = box
    sy, sx = (float(v) for v in slide_scale[-2:])
    ty, tx = (float(v) for v in slide_translate[-2:])
    r0, r1 = sorted(((y0 - ty) / sy + 0.5, (y1 - ty) / sy + 0.5))
    c0, c1 = sorted(((x0 - tx) / sx + 0.5, (x1 - tx) / sx + 0.5))
    H, W = level0_shape[:2]
    r0, c0 = max(0.0, math.floor(r0)), max(0.0, math.floor(c0))
    r1, c1 = min(float(H), math.ceil(r1)), min(float(W), math.ceil(c1))
    if r1 - r0 < 1 or c1 - c0 < 1:
        return None
    return (r0, c0, r1 - r0, c1 - c0)


def format_progress(snap: Snapshot | None, progress: dict) -> str:
    """'tiles 120 / 480 (25 %), 2 skipped, about 1 min 10 s left' for the dock's status line,
    saying while the map fills in that its colours are provisional."""
    done = int(progress.get("done", snap.done if snap else 0))
    total = int(progress.get("total", snap.total if snap else 0))
    skipped = int(progress.get("skipped", snap.skipped if snap else 0))
    text = f"tiles {done} / {total}"
    if total:
        text += f" ({100 * done / total:.0f} %)"
    if skipped:
        text += f", {skipped} skipped"
    left = progress.get("remaining_s")
    if left is not None and done < total:
        text += f", about {format_seconds(float(left))} left"
    if snap is not None and snap.values is not None and done < total:
        # the live colours span the tiles done (LIVE_PERCENTILES); the finished map has its
        # own scale, so a region bright now may be cool at the end
        text += "; colours scaled to the tiles done so far, final when the run ends"
    return text


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 0):.0f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"
