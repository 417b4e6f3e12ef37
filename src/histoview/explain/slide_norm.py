"""Slide-wide normalisation of a merged map, DT Grad-CAM's slide-wide threshold, seam score.

A slide map (:mod:`histoview.explain.slide_cam`) is raw CAM merged over tiles, in the
units of the model's class score. At the end of a run it is normalised once for the whole
slide, streamed block by block so memory stays bounded:

1. :func:`robust_histogram`: one pass for the largest value, one filling a histogram
   (4096 bins on [0, max]) of the cells a tile covered (NaN: none did), one filling 4096
   bins on [0, about the 99.5th percentile] (plus one bin above), so outliers cannot
   coarsen it;
2. :class:`SlideScale`: the *robust maximum* ``scale`` = the 99.5th percentile of that
   histogram (linear within a bin: error <= 1 / 4096 of it). A few extreme cells (an ink spot,
   a fold) then cannot squash every other value towards 0, as dividing by the maximum
   would. Normalised values are ``clip(raw / scale, 0, 1)``.
3. DT Grad-CAM (Liu et al., arXiv:2308.13150) thresholds the map adaptively; histoview's
   rule (:func:`histoview.explain.gradcam.dynamic_threshold`) is Otsu's threshold on the
   map's values. On a slide the same rule is applied once to the *slide's* distribution of
   normalised values, so the threshold is the same everywhere (a per-tile threshold would
   keep the top of every benign tile). Otsu's between-class variance is maximised over the
   histogram's bin centres (:func:`histogram_otsu`, the formula of ``skimage`` on a
   histogram), which agrees with ``dynamic_threshold`` on a single image to within a bin of
   its 256 (``tests/test_slide_cam.py``).

:func:`seam_score` measures seams (issue 17, item 7): the mean absolute difference of
neighbouring cells across the lines where the crop mosaic switches from one tile to the
next, divided by the same inside tiles. 1 means borders look like the inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from histoview.explain.slide_cam import CellGrid

BINS = 4096
ROBUST_PERCENTILE = 99.5


def iter_blocks(shape: tuple[int, int], block: int = 1024) -> Iterator[tuple[slice, slice]]:
    """Row-major (rows, cols) slices covering an (H, W) grid in blocks of ``block`` cells."""
    H, W = shape
    for r in range(0, H, block):
        for c in range(0, W, block):
            yield slice(r, min(r + block, H)), slice(c, min(c + block, W))


@dataclass(frozen=True)
class ValueHistogram:
    """Counts of map values in bins ``edges[i] <= v < edges[i + 1]`` (the last bin closed).

    Attributes:
        counts: (n,) int64.
        edges: (n + 1,) float64, increasing, from 0.
        maximum: the largest value counted (0 when none).
    """

    counts: np.ndarray
    edges: np.ndarray
    maximum: float = 0.0

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), linear within its bin (0 for an empty histogram)."""
        if self.total == 0:
            return 0.0
        cum = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.float64)
        target = q / 100.0 * cum[-1]
        i = int(np.clip(np.searchsorted(cum, target, side="left"), 1, len(cum) - 1))
        lo, hi = cum[i - 1], cum[i]
        frac = 0.0 if hi <= lo else (target - lo) / (hi - lo)
        value = self.edges[i - 1] + frac * (self.edges[i] - self.edges[i - 1])
        return float(min(value, self.maximum))


def _finite(values) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return v[np.isfinite(v)]


def value_histogram(
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    bins: int = BINS,
    top: float | None = None,
    maximum: float | None = None,
) -> ValueHistogram:
    """Histogram of every finite value ``blocks()`` yields, streamed.

    Args:
        blocks: called once or twice; each call yields arrays of map values (NaN = not
            covered, left out). Values must be >= 0 (CAM after ReLU, attention).
        bins: bins on [0, top].
        top: the histogram's fine range (None: the largest value, found in a first pass).
        maximum: with ``top``, the largest value: values in (top, maximum] fall in one
            last, wide bin.
    """
    if top is None:
        top = maximum = 0.0
        for values in blocks():
            v = _finite(values)
            if v.size:
                if v.min() < 0:
                    raise ValueError(f"map values must be >= 0, got {v.min():.4g}")
                top = maximum = max(top, float(v.max()))
    edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
    if maximum is not None and maximum > edges[-1]:
        edges = np.append(edges, maximum)
    counts = np.zeros(len(edges) - 1, np.int64)
    for values in blocks():
        counts += np.histogram(_finite(values), bins=edges)[0]
    return ValueHistogram(counts, edges, float(maximum if maximum is not None else top))


def robust_histogram(
    blocks: Callable[[], Iterable[np.ndarray]],
    *,
    percentile: float = ROBUST_PERCENTILE,
    bins: int = BINS,
) -> ValueHistogram:
    """A histogram fine up to the ``percentile``: :func:`value_histogram` on [0, max], then
    again on [0, the upper edge of the bin holding the percentile] (three streamed passes).

    A few extreme cells make [0, max] mostly empty: the second histogram keeps ``bins``
    bins below the robust maximum, so the percentile and the Otsu threshold of the
    normalised map stay exact to 1 / ``bins`` of it.
    """
    coarse = value_histogram(blocks, bins=bins)
    if percentile >= 100 or coarse.total == 0:
        return coarse
    p = coarse.percentile(percentile)
    i = min(int(np.searchsorted(coarse.edges, p, side="right")), len(coarse.edges) - 1)
    top = float(coarse.edges[i])
    if top >= coarse.maximum:
        return coarse
    return value_histogram(blocks, bins=bins, top=top, maximum=coarse.maximum)


def histogram_otsu(counts: np.ndarray, centres: np.ndarray) -> float:
    """Otsu's threshold of a histogram (maximal between-class variance), as ``skimage``'s
    ``threshold_otsu(hist=(counts, centres))``: the centre of the low class's top bin.

    Args:
        counts: (n,) counts per bin.
        centres: (n,) increasing bin centres.
    """
    counts = np.asarray(counts, np.float64)
    centres = np.asarray(centres, np.float64)
    keep = counts > 0
    counts, centres = counts[keep], centres[keep]
    if len(counts) < 2:
        return float(centres[0]) if len(centres) else 0.0
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centres) / w1
    m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.argmax(between))])


@dataclass(frozen=True)
class SlideScale:
    """How a slide's raw map becomes its normalised one.

    Attributes:
        scale: raw value mapped to 1 (the robust maximum; 0: the map is empty or all zero).
        percentile: the percentile ``scale`` is (100 = the maximum).
        maximum: the largest raw value.
        threshold: DT Grad-CAM's slide-wide threshold on the normalised map (None: none).
        threshold_method: ``"otsu"`` or None.
        cells: cells covered by a tile (the values counted).
    """

    scale: float
    percentile: float
    maximum: float
    threshold: float | None = None
    threshold_method: str | None = None
    cells: int = 0

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """float32 ``clip(raw / scale, 0, 1)`` (NaN stays NaN), zeroed below the threshold."""
        raw = np.asarray(raw, np.float32)
        if self.scale <= 0:
            out = np.where(np.isfinite(raw), 0, np.nan).astype(np.float32)
        else:
            out = np.clip(raw / np.float32(self.scale), 0, 1)
        if self.threshold is not None:
            out = np.where(out > self.threshold, out, np.where(np.isnan(out), np.nan, 0))
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "normalisation": f"clip(raw / p{self.percentile:g}, 0, 1) over the slide's cells",
            "scale_raw": self.scale,
            "percentile": self.percentile,
            "raw_max": self.maximum,
            "threshold": self.threshold,
            "threshold_raw": None if self.threshold is None else self.threshold * self.scale,
            "threshold_method": self.threshold_method,
            "cells": self.cells,
        }


def slide_scale(
    hist: ValueHistogram, *, percentile: float = ROBUST_PERCENTILE, threshold: str | None = None
) -> SlideScale:
    """The :class:`SlideScale` of a slide from its raw :func:`value_histogram`.

    Args:
        hist: histogram of the raw merged map over the covered cells.
        percentile: robust maximum's percentile (100: the maximum, as single images use).
        threshold: None, or ``"otsu"`` for DT Grad-CAM (module docstring, step 3).
    """
    if threshold not in (None, "otsu"):
        raise ValueError(f"unknown threshold method {threshold!r}; use 'otsu'")
    top = hist.maximum
    scale = top if percentile >= 100 else hist.percentile(percentile)
    thr = None
    if threshold == "otsu" and scale > 0:
        # the normalised values' histogram: centres / scale; all above scale clip to 1
        centres = 0.5 * (hist.edges[:-1] + hist.edges[1:]) / scale
        below = centres < 1.0
        counts = np.append(hist.counts[below], hist.counts[~below].sum())
        centres = np.append(centres[below], 1.0)
        thr = histogram_otsu(counts, centres)
    return SlideScale(scale, float(percentile), top, thr, threshold, hist.total)


class SeamMeter:
    """Streamed :func:`seam_score`: feed the merged map in row blocks, top to bottom.

    Neighbouring cells (horizontal and vertical pairs, both finite) are *border* pairs when
    the crop mosaic gives them to different tiles (:meth:`CellGrid.owner`), both processed,
    else *inside* pairs (same tile). The score is the mean absolute difference across
    borders over the same inside tiles: about 1 when borders look like the inside, > 1
    where seams show.

    Args:
        grid: the tile layout of the map.
        done: (gi, gj) bool, tiles processed (default all).
    """

    def __init__(self, grid: CellGrid, done: np.ndarray | None = None) -> None:
        self.grid = grid
        self.done = np.ones(grid.grid_shape, bool) if done is None else np.asarray(done, bool)
        if self.done.shape != tuple(grid.grid_shape):
            raise ValueError(f"done {self.done.shape} is not the grid's {grid.grid_shape}")
        self.col_owner = grid.owner(1, np.arange(grid.shape[1]))
        self._sums = {"border": [0.0, 0], "inside": [0.0, 0]}
        self._last: tuple[int, np.ndarray] | None = None  # the previous block's last row

    def add(self, rows: slice, values: np.ndarray) -> None:
        """Add the map's rows ``rows`` (``values`` (h, W), NaN = not covered), in order."""
        values = np.asarray(values, np.float64)
        start, joined = rows.start or 0, 0
        if self._last is not None and self._last[0] == start - 1:
            start, joined = start - 1, 1  # the vertical pairs across the block boundary
            values = np.concatenate([self._last[1][None], values])
        self._last = (start + len(values) - 1, values[-1])
        row_owner = self.grid.owner(0, np.arange(start, start + len(values)))
        owned = self.done[row_owner[:, None], self.col_owner[None, :]]
        for axis, owner in ((1, self.col_owner), (0, row_owner)):
            # horizontal pairs of the joined row were counted with the previous block
            a = values[joined:, :-1] if axis == 1 else values[:-1, :]
            b = values[joined:, 1:] if axis == 1 else values[1:, :]
            oa = owned[joined:, :-1] if axis == 1 else owned[:-1, :]
            ob = owned[joined:, 1:] if axis == 1 else owned[1:, :]
            cross = owner[:-1] != owner[1:]
            cross = cross[None, :] if axis == 1 else cross[:, None]
            ok = np.isfinite(a) & np.isfinite(b) & oa & ob
            diff = np.abs(a - b)
            for name, sel in (("border", ok & cross), ("inside", ok & ~cross)):
                self._sums[name][0] += float(diff[sel].sum())
                self._sums[name][1] += int(sel.sum())

    def result(self) -> dict[str, float]:
        """``{"seam_score", "border", "inside", "border_pairs", "inside_pairs"}``."""
        (bs, bn), (ins, inn) = self._sums["border"], self._sums["inside"]
        border, inside = bs / max(bn, 1), ins / max(inn, 1)
        return {
            "seam_score": border / inside if inside > 0 and bn else float("nan"),
            "border": border,
            "inside": inside,
            "border_pairs": bn,
            "inside_pairs": inn,
        }


def seam_score(
    values: np.ndarray, grid: CellGrid, done: np.ndarray | None = None
) -> dict[str, float]:
    """The seam score of a whole merged map (:class:`SeamMeter` in one block).

    Args:
        values: (H, W) merged map on ``grid``'s cells (NaN = not covered).
        grid: the tile layout.
        done: (gi, gj) bool, tiles processed (default all).

    Returns:
        :meth:`SeamMeter.result`.
    """
    meter = SeamMeter(grid, done)
    meter.add(slice(0, len(values)), values)
    return meter.result()
