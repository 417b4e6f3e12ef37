"""A tissue mask and where it lies on a slide: how much of any level-0 rectangle is tissue.

:class:`TissueMask` is what :func:`histoview.preprocessing.tissue.detect_tissue` returns. It
answers "how much of this level-0 rectangle is tissue" in constant time from a summed-area table
(Crow, "Summed-area tables for texture mapping", SIGGRAPH 1984), exactly: the integral of the
piecewise-constant mask over ``[0, y) x [0, x)`` is bilinear between the table's entries, so mask
pixels the rectangle covers in part count by the part covered. :meth:`TissueMask.tiles` lists the
tiles of a grid that have tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TissueMask"]


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask and where it lies on the slide.

    Mask pixel (i, j) covers level-0 rows ``[i f, (i + 1) f)`` and columns ``[j f, (j + 1) f)``,
    ``f = pixel_size_um / level0_pixel_size_um`` (:attr:`scale`), as
    :meth:`~histoview.io.image.ImageSource.read_rect` reads it; the mask may reach past the
    slide's last pixel by less than one mask pixel (that part is glass).

    Attributes:
        mask: bool (h, w), True where there is tissue.
        pixel_size_um: micrometres per mask pixel.
        level0_pixel_size_um: micrometres per level-0 pixel of the slide.
        level0_shape: (H, W) of the slide's level 0, pixels.
        method: ``"otsu"`` or ``"od"``.
        threshold: the threshold used (saturation 0..1 for ``"otsu"``, summed OD for ``"od"``).
        path: the slide's file, when there is one.
    """

    mask: np.ndarray
    pixel_size_um: float
    level0_pixel_size_um: float
    level0_shape: tuple[int, int]
    method: str = "otsu"
    threshold: float = float("nan")
    path: str | None = None
    _sat: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        mask = np.asarray(self.mask, dtype=bool)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"a tissue mask is a non-empty 2-D array, not {mask.shape}")
        if not (self.pixel_size_um > 0 and self.level0_pixel_size_um > 0):
            raise ValueError("pixel sizes must be positive micrometres per pixel")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "level0_shape", tuple(int(v) for v in self.level0_shape))
        sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
        np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
        object.__setattr__(self, "_sat", sat)

    @property
    def scale(self) -> float:
        """Level-0 pixels per mask pixel."""
        return self.pixel_size_um / self.level0_pixel_size_um

    def area_um2(self) -> float:
        """Tissue area, square micrometres."""
        return float(self._sat[-1, -1]) * self.pixel_size_um**2

    def slide_fraction(self) -> float:
        """Fraction of the slide's level 0 that is tissue."""
        h, w = self.level0_shape
        return self.area_um2() / (h * w * self.level0_pixel_size_um**2)

    def fraction(self, row: float, col: float, height: float, width: float) -> float:
        """Fraction (0..1) of the level-0 rectangle ``[row, row + height) x [col, col + width)``
        that is tissue; parts outside the mask count as glass. Constant time (summed-area table,
        bilinear between its entries, so partly covered mask pixels count by the covered part)."""
        if not (height > 0 and width > 0):
            raise ValueError(f"a rectangle needs height and width > 0, got {height} x {width}")
        f = self.scale
        y0, x0 = row / f, col / f
        y1, x1 = y0 + height / f, x0 + width / f
        h, w = self.mask.shape
        y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
        x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
        if y1 <= y0 or x1 <= x0:
            return 0.0
        s = self._integral
        area = s(y1, x1) - s(y0, x1) - s(y1, x0) + s(y0, x0)
        return min(max(area / ((height / f) * (width / f)), 0.0), 1.0)

    def _integral(self, y: float, x: float) -> float:
        """Tissue pixels in mask rows [0, y) and columns [0, x) (y, x within the mask)."""
        h, w = self.mask.shape
        i, j = min(int(y), h - 1), min(int(x), w - 1)
        a, b = y - i, x - j
        t = self._sat.item
        s00, s01, s10, s11 = t(i, j), t(i, j + 1), t(i + 1, j), t(i + 1, j + 1)
        return s00 + a * (s10 - s00) + b * (s01 - s00) + a * b * (s11 - s10 - s01 + s00)

    def fractions(self, rows, cols, height, width) -> np.ndarray:
        """:meth:`fraction` of many rectangles at once (arrays of level-0 corners; ``height`` and
        ``width`` scalars or arrays): float64 (N,)."""
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        rows, cols, hh, ww = np.broadcast_arrays(rows, cols, height, width)
        hh, ww = np.asarray(hh, np.float64), np.asarray(ww, np.float64)
        if np.any(~(hh > 0)) or np.any(~(ww > 0)):
            raise ValueError("rectangles need height and width > 0")
        f = self.scale
        h, w = self.mask.shape
        y0, x0 = rows / f, cols / f
        y1, x1 = y0 + hh / f, x0 + ww / f
        y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
        x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
        s = self._integrals
        area = s(y1, x1) - s(y0, x1) - s(y1, x0) + s(y0, x0)
        area = np.where((y1 > y0) & (x1 > x0), area, 0.0)
        return np.clip(area / ((hh / f) * (ww / f)), 0.0, 1.0)

    def _integrals(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        h, w = self.mask.shape
        i = np.minimum(y.astype(np.int64), h - 1)
        j = np.minimum(x.astype(np.int64), w - 1)
        a, b = y - i, x - j
        t = self._sat
        s00, s01, s10, s11 = t[i, j], t[i, j + 1], t[i + 1, j], t[i + 1, j + 1]
        return s00 + a * (s10 - s00) + b * (s01 - s00) + a * b * (s11 - s10 - s01 + s00)

    def tiles(
        self,
        tile_h: float,
        tile_w: float | None = None,
        *,
        stride: float | tuple[float, float] | None = None,
        min_fraction: float = 0.1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The tiles of a grid over the slide that have tissue.

        The grid's tiles are ``tile_h`` x ``tile_w`` level-0 pixels (floats allowed: a tile of
        224 px at 0.5 um/px on a 0.25 um/px slide is 448), their corners at multiples of
        ``stride`` (default: the tile size, no overlap) from (0, 0), as long as they start
        inside the slide. Kept: tiles whose tissue :meth:`fraction` is at least
        ``min_fraction`` and above 0 (so a tile of glass never is).

        Returns:
            ``(origins, fractions)``: float64 (N, 2) level-0 (row, col) corners in row-major
            order, and their tissue fractions (N,).
        """
        tile_w = tile_h if tile_w is None else tile_w
        if not (tile_h > 0 and tile_w > 0):
            raise ValueError(f"tiles need a size > 0, got {tile_h} x {tile_w}")
        sy, sx = (tile_h, tile_w) if stride is None else np.broadcast_to(stride, (2,))
        if not (sy > 0 and sx > 0):
            raise ValueError(f"the stride must be > 0, got {stride}")
        height, width = self.level0_shape
        rows = np.arange(math.ceil(height / sy)) * float(sy)
        cols = np.arange(math.ceil(width / sx)) * float(sx)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        frac = self.fractions(rr.ravel(), cc.ravel(), tile_h, tile_w)
        keep = (frac >= min_fraction) & (frac > 0)
        return np.stack([rr.ravel()[keep], cc.ravel()[keep]], axis=1), frac[keep]

    def describe(self) -> dict:
        """Plain data for a run's summary."""
        return {
            "method": self.method,
            "threshold": round(float(self.threshold), 4),
            "pixel_size_um": self.pixel_size_um,
            "shape": list(self.mask.shape),
            "tissue_area_mm2": round(self.area_um2() / 1e6, 4),
            "slide_fraction": round(self.slide_fraction(), 4),
        }
