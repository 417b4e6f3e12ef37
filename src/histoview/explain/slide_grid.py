"""The tile grid of a whole-slide run: tiles of the model's input at the model's pixel size.

Tile coordinates are data, not a loop variable (CLAM's ``create_patches_fp.py``; TIAToolbox's
``IOSegmentorConfig``): a :class:`TileGrid` says where every tile of a slide, or of a region of
it, lies, which ones hold tissue, and how big each map is.

**Frames.** The *grid frame* is the region resampled to the model's pixel size ``pixel_size_um``
(``scale = pixel_size_um / level0_pixel_size_um`` level-0 pixels per frame pixel), its origin at
the region's top-left corner (level-0 pixel ``(row0, col0)``). Tile (i, j) covers frame pixels
``[i s, i s + T) x [j s, j s + T)``, T the tile size and ``s = T - overlap`` the stride; the
last row and column of tiles may reach past the region (the reader pads with white glass, and
maps are cut to the frame). A map with ``factor`` f has ``ceil(frame / f)`` pixels per side.

**Regions** (:func:`parse_region`) are ``x,y,w,h``: column, row, width and height in level-0
pixels, or in micrometres with a ``um`` suffix (``"1000,2000,500,500um"``).

**Tissue** (:func:`make_grid`): a tile is processed when the tissue mask
(:class:`~histoview.preprocessing.tissue.TissueMask`, anything with ``fraction(row, col,
height, width)`` over level-0 rectangles, or ``fractions`` of many) covers at least
``min_tissue`` of it (and more than nothing); background tiles are never read, never sent to
a model.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from histoview.explain.slide_processor import TileBox

#: default smallest tissue fraction of a tile that is processed
MIN_TISSUE = 0.02


class RegionError(ValueError):
    """A region that does not lie on the slide or cannot be read."""


def parse_region(
    text: str, *, level0_pixel_size_um: float | None, path: str | os.PathLike = "the slide"
) -> tuple[float, float, float, float]:
    """``(row, col, height, width)`` in level-0 pixels of ``"x,y,w,h"`` (level-0 pixels) or
    ``"x,y,w,h um"`` (micrometres, converted with ``level0_pixel_size_um``)."""
    m = re.fullmatch(r"\s*([^,]+),([^,]+),([^,]+),([^,]+?)\s*(um|µm)?\s*", str(text))
    if not m:
        raise RegionError(
            f"{path}: region {text!r} is not x,y,w,h (level-0 pixels, or micrometres with 'um')"
        )
    try:
        x, y, w, h = (float(v) for v in m.groups()[:4])
    except ValueError:
        raise RegionError(f"{path}: region {text!r}: x,y,w,h must be numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise RegionError(f"{path}: region {text!r}: width and height must be positive")
    if m.group(5):
        if not level0_pixel_size_um:
            raise RegionError(
                f"{path}: region {text!r} is in micrometres but the slide's pixel size is "
                "unknown; give it with --pixel-size, or the region in pixels"
            )
        x, y, w, h = (v / level0_pixel_size_um for v in (x, y, w, h))
    return (y, x, h, w)


def clip_region(
    region: tuple[float, float, float, float] | None,
    level0_shape: tuple[int, int],
    *,
    path: str | os.PathLike = "the slide",
) -> tuple[float, float, float, float]:
    """The region cut to the slide (None: the whole slide); one wholly outside raises
    :class:`RegionError` naming the file, the region and the slide's size."""
    H, W = (int(v) for v in level0_shape[:2])
    if region is None:
        return (0.0, 0.0, float(H), float(W))
    r, c, h, w = (float(v) for v in region)
    r0, c0 = max(r, 0.0), max(c, 0.0)
    r1, c1 = min(r + h, float(H)), min(c + w, float(W))
    if r1 - r0 < 1 or c1 - c0 < 1:
        raise RegionError(
            f"{path}: region x={c:g}, y={r:g}, {w:g} x {h:g} pixels lies outside the slide "
            f"({W} x {H} pixels at level 0)"
        )
    return (r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a run (module docstring for the frames).

    Attributes:
        region: (row, col, height, width) of the region in level-0 pixels.
        pixel_size_um: micrometres per frame pixel (the model's).
        level0_pixel_size_um: micrometres per level-0 pixel of the slide.
        tile_size: tile edge T in frame pixels.
        overlap: frame pixels neighbouring tiles share.
        tissue: (rows, cols) bool: the tiles to process.
    """

    region: tuple[float, float, float, float]
    pixel_size_um: float
    level0_pixel_size_um: float
    tile_size: int
    overlap: int
    tissue: np.ndarray

    @property
    def scale(self) -> float:
        """Level-0 pixels per frame pixel."""
        return self.pixel_size_um / self.level0_pixel_size_um

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(height, width) of the region in frame pixels."""
        return frame_shape(self.region, self.scale)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return tuple(self.tissue.shape)

    @property
    def n_tiles(self) -> int:
        """Grid cells, background included (the range of :attr:`TileBox.index`)."""
        return int(self.tissue.size)

    def map_shape(self, factor: int) -> tuple[int, int]:
        """(height, width) of a map with ``factor`` frame pixels per map pixel."""
        fh, fw = self.frame_shape
        return (math.ceil(fh / factor), math.ceil(fw / factor))

    def box(self, index: int) -> TileBox:
        """The :class:`TileBox` of grid cell ``index`` (row-major)."""
        rows, cols = self.shape
        i, j = divmod(int(index), cols)
        if not 0 <= i < rows:
            raise IndexError(f"tile {index} is not in a grid of {rows} x {cols} tiles")
        fr, fc = i * self.stride, j * self.stride
        s = self.scale
        r0, c0 = self.region[:2]
        extent = self.tile_size * s
        return TileBox(int(index), (i, j), (fr, fc), (r0 + fr * s, c0 + fc * s, extent, extent))

    def tissue_indices(self) -> np.ndarray:
        """Indices of the tiles to process, row-major."""
        return np.flatnonzero(self.tissue.reshape(-1))

    def describe(self) -> dict:
        """Plain data: what the store records and the summary reports."""
        return {
            "region": [float(v) for v in self.region],
            "pixel_size_um": float(self.pixel_size_um),
            "level0_pixel_size_um": float(self.level0_pixel_size_um),
            "tile_size": int(self.tile_size),
            "overlap": int(self.overlap),
            "grid_shape": [int(v) for v in self.shape],
            "frame_shape": [int(v) for v in self.frame_shape],
            "tissue_tiles": int(self.tissue.sum()),
        }


def frame_shape(region, scale: float) -> tuple[int, int]:
    """(height, width) in frame pixels of a level-0 region at ``scale`` level-0 px per frame px
    (a remainder under 1 % of a pixel does not add a pixel)."""
    h, w = region[2] / scale, region[3] / scale
    return (max(1, math.ceil(h - 0.01)), max(1, math.ceil(w - 0.01)))


def tile_counts(frame: tuple[int, int], tile_size: int, overlap: int) -> tuple[int, int]:
    """(rows, cols) of tiles of ``tile_size`` with ``overlap`` that cover ``frame``."""
    stride = tile_size - overlap
    if stride < 1:
        raise ValueError(f"overlap {overlap} leaves no stride for tiles of {tile_size} pixels")
    return tuple(max(1, math.ceil((n - overlap) / stride)) for n in frame)


def make_grid(
    region: tuple[float, float, float, float],
    *,
    pixel_size_um: float,
    level0_pixel_size_um: float,
    tile_size: int,
    overlap: int = 0,
    tissue=None,
    min_tissue: float = MIN_TISSUE,
) -> TileGrid:
    """The grid over ``region`` (level-0 (row, col, height, width)); with a ``tissue`` mask
    (``fraction(row, col, h, w)``), only tiles with at least ``min_tissue`` tissue are kept."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"tile size {tile_size} and overlap {overlap}: need 0 <= overlap < tile")
    scale = pixel_size_um / level0_pixel_size_um
    rows, cols = tile_counts(frame_shape(region, scale), tile_size, overlap)
    keep = np.ones((rows, cols), bool)
    grid = TileGrid(
        tuple(float(v) for v in region),
        float(pixel_size_um),
        float(level0_pixel_size_um),
        int(tile_size),
        int(overlap),
        keep,
    )
    if tissue is not None:
        s, extent = grid.scale, tile_size * grid.scale
        rr = region[0] + np.arange(rows) * grid.stride * s
        cc = region[1] + np.arange(cols) * grid.stride * s
        # the part of each tile inside the region: the padding outside it is not glass to count
        hh = np.minimum(extent, region[0] + region[2] - rr)
        ww = np.minimum(extent, region[1] + region[3] - cc)
        r, c = np.meshgrid(rr, cc, indexing="ij")
        h, w = np.meshgrid(hh, ww, indexing="ij")
        if hasattr(tissue, "fractions"):
            frac = np.asarray(tissue.fractions(r.ravel(), c.ravel(), h.ravel(), w.ravel()))
        else:
            frac = np.array(
                [tissue.fraction(*v) for v in zip(r.ravel(), c.ravel(), h.ravel(), w.ravel())]
            )
        keep[...] = (frac.reshape(rows, cols) >= min_tissue) & (frac.reshape(rows, cols) > 0)
    return grid
