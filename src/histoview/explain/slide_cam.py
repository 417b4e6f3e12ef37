"""Class activation maps tile by tile on a whole slide: batched maps and overlap blending.

A slide is explained as overlapping tiles of the model's input size. Each tile gives a
map at the target layer's natural resolution (one value per *cell*: ``stride`` input
pixels, e.g. 16 for customNet's ``features.relu5``, 32 for a ResNet's ``layer4``); the
slide map is the tiles' maps merged on that cell grid, never upsampled to pixels.

**Batched maps** (:func:`tile_cams`, :func:`tile_node_attention`). One hooked forward and
one backward for a batch of tiles (:class:`~histoview.explain.gradcam.BaseCAM`: the class
score is summed over the batch; in eval mode the tiles are independent, so each tile's
gradient is its own). The map returned is the *raw* CAM, ``ReLU(sum_k alpha_k A^k)``
(Selvaraju et al. 2017, Eq. 1-2; Grad-CAM++: Chattopadhay et al. 2018, Eq. 19), not
divided by the tile's maximum and not upsampled. Upsampled bilinearly to the input it
is exactly what :meth:`BaseCAM.compute` returns for that tile alone.

**Why raw, and how tiles become comparable.** Grad-CAM's channel weights ``alpha_k``
are recomputed on every tile, so a tile's map is in the units of *that tile's* class
score: for a network whose head is global pooling then a linear layer, ``sum_ij CAM_ij``
is the part of the tile's logit the layer explains (Selvaraju et al. 2017, Sec. 3, the
CAM generalisation). Raw values are therefore comparable across tiles in logit units: a
benign tile gives weak or no evidence for "malignant", a lesion tile strong evidence.
Dividing each tile by its own maximum (what the single-image explanation does) would
make every tile's peak 1 and light up benign tissue; we keep the raw scale, blend, and
normalise once for the whole slide (:mod:`histoview.explain.slide_norm`: divided by a
robust maximum, the 99.5th percentile of the covered cells, then clipped to [0, 1]).
``benchmarks/bench_slide_cam.py`` compares the two on a phantom mosaic (customNet demo
weights, 256 tiles): lesion AUC 0.97 with the raw scale, 0.84 with per-tile maxima.

**Blending** (:func:`blend_window`, :class:`BlendAccumulator`). Tiles overlap by
``overlap`` cells on each side (a quarter of the tile by default: 2 of customNet's 8
cells, tile stride 6 cells = 96 pixels). Each tile's map is weighted by a separable
window and accumulated as ``sum(w * map)`` and ``sum(w)``; the merged map is their
ratio. The default window is a *linear cross-fade*: 1 inside the tile, falling linearly
over the ``overlap`` border cells to ``0.5 / overlap`` at the edge cell, so two
neighbours' weights over their shared band sum to exactly 1 (a partition of unity): the
merged map moves linearly from one tile's values to the next across the band, a
constant or a map that the tiles agree on is reproduced exactly, tile interiors keep
their own detail, and border cells, where zero padding disturbs a CNN most, count
least. Where a neighbour is missing (slide edge, background tile not processed) the
one tile's value is used as it is. ``"hann"`` (a raised-cosine over the whole tile,
floored at 0.05) and ``"crop"`` (no blending: each cell from the tile whose centre is
nearest, the mosaic that shows seams) are there for comparison; on the same mosaic the seam
score (:func:`~histoview.explain.slide_norm.seam_score`, border over inside differences) is
0.93 linear, 1.02 Hann, 1.41 crop.

**RMCG** (:func:`tile_node_attention`). RMCG's explanation is its graph-pooling attention
over the tile's pixel nodes (:mod:`histoview.explain.rmcg`), which sums to 1 within each
tile and does not depend on the class. Per tile it is scaled by the number of nodes (1 =
uniform attention), so every tile carries the same total and the merged map says where
*within* tissue the model pools from, not which tiles hold the class: that is what the
probability channel is for. It is blended exactly like CAM (same cell grid: RMCG's nodes
are ``backbone.layer4`` pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOWS = ("linear", "hann", "crop")
#: weight of the cells a "crop" window leaves out (tiny, so the slide's edge cells, which
#: no other tile covers, still get the one tile's value)
CROP_OUTSIDE = 1e-6
HANN_FLOOR = 0.05


@dataclass(frozen=True)
class TileMaps:
    """Maps and class probabilities of a batch of tiles.

    Attributes:
        maps: (B, h, w) float32 >= 0, raw (not normalised), one value per cell of the target
            layer's grid.
        probabilities: (B, C) float32 softmax class probabilities of each tile.
        target_class: the class the maps explain (the same for every tile).
        stride: input pixels per map cell (input size / map size).
    """

    maps: np.ndarray
    probabilities: np.ndarray
    target_class: int
    stride: int


def map_stride(input_size: tuple[int, int], map_shape: tuple[int, int]) -> int:
    """Input pixels per map cell; ValueError unless both axes divide evenly by the same factor."""
    (H, W), (h, w) = input_size, map_shape
    if h <= 0 or w <= 0 or H % h or W % w or H // h != W // w:
        raise ValueError(
            f"input {H} x {W} is not a whole multiple of the map {h} x {w} (same on both axes)"
        )
    return H // h


#: the class score is multiplied by this before a float16 backward, and the gradients
#: divided by it after (loss scaling, as ``torch.amp.GradScaler`` does): small gradients
#: would otherwise flush to zero, and Grad-CAM++'s squares and cubes of them underflow
FP16_SCORE_SCALE = 1024.0


def tile_cams(engine, x, target_class: int) -> TileMaps:
    """Raw class activation maps of a batch of tiles: one forward and one backward.

    The hooked forward is :meth:`BaseCAM.forward` (under the caller's ``torch.autocast``
    when mixed precision is on); the backward of the summed class score reaches only the
    target layer. Channel weights (:meth:`BaseCAM.channel_weights`) and the weighted sum are
    computed in float32 whatever the activations' precision; with float16 activations the
    score is scaled by :data:`FP16_SCORE_SCALE` for the backward. In float32 this is
    exactly :meth:`BaseCAM.compute` without the upsampling.

    Args:
        engine: a :class:`~histoview.explain.gradcam.BaseCAM` (``GradCAM``,
            ``GradCAMPlusPlus``) on the model.
        x: (B, 3, T, T) normalised tiles (any device; moved to the model's).
        target_class: class every map explains.

    Returns:
        :class:`TileMaps` with ``maps`` (B, h, w) at the target layer's resolution.
    """
    import torch
    import torch.nn.functional as F

    fwd = engine.forward(x)
    logits = fwd.logits
    if not logits.requires_grad:
        raise RuntimeError(f"the logits do not depend on target layer {engine.layer_name!r}")
    act = fwd.activation
    scale = FP16_SCORE_SCALE if act.dtype == torch.float16 else 1.0
    with torch.enable_grad():
        score = logits.float()[:, int(target_class)].sum() * scale  # tiles independent (eval)
        (grad,) = torch.autograd.grad(score, act)
    with torch.no_grad(), torch.autocast(act.device.type, enabled=False):
        act32, grad32 = act.detach().float(), grad.float() / scale
        weights = engine.channel_weights(act32, grad32, logits.detach().float())
        cam = F.relu(torch.einsum("bk,bkhw->bhw", weights, act32))
    maps = cam.cpu().numpy().astype(np.float32)
    probs = torch.softmax(logits.detach().float(), dim=1).cpu().numpy().astype(np.float32)
    return TileMaps(
        maps, probs, int(target_class), map_stride(tuple(x.shape[-2:]), maps.shape[-2:])
    )


def tile_node_attention(model, x, target_class: int) -> TileMaps:
    """RMCG node attention of a batch of tiles, times the number of nodes (1 = uniform).

    Args:
        model: an RMCG model (``last_node_attention`` (B, h, w) after a forward).
        x: (B, 3, T, T) normalised tiles.
        target_class: recorded with the maps (the attention itself is class-independent).

    Returns:
        :class:`TileMaps`; ``maps`` sum to h * w per tile.
    """
    import torch

    if not hasattr(model, "last_node_attention"):
        raise TypeError(f"{type(model).__name__} has no node attention; is it an RMCG model?")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x.to(device))
    finally:
        model.train(was_training)
    attention = model.last_node_attention.float()
    h, w = attention.shape[-2:]
    maps = (attention * (h * w)).cpu().numpy().astype(np.float32)
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32)
    return TileMaps(maps, probs, int(target_class), map_stride(tuple(x.shape[-2:]), (h, w)))


def blend_window(n: int, overlap: int, kind: str = "linear") -> np.ndarray:
    """1-D blending weights of a tile of ``n`` cells overlapping its neighbours by ``overlap``.

    Args:
        n: cells along the axis.
        overlap: cells shared with each neighbour (0 <= 2 * overlap <= n).
        kind: ``"linear"`` (cross-fade, a partition of unity over the overlap: the module
            docstring), ``"hann"`` (``0.05 + 0.95 sin^2(pi (i + 1/2) / n)``) or ``"crop"``
            (1 on the cells nearest this tile's centre, :data:`CROP_OUTSIDE` elsewhere).

    Returns:
        (n,) float64 weights > 0.
    """
    if not 0 <= 2 * overlap <= n:
        raise ValueError(f"overlap {overlap} must be between 0 and half the tile ({n} cells)")
    i = np.arange(n, dtype=np.float64)
    if kind == "linear":
        if overlap == 0:
            return np.ones(n)
        return np.minimum(1.0, np.minimum(i + 0.5, n - i - 0.5) / overlap)
    if kind == "hann":
        return HANN_FLOOR + (1 - HANN_FLOOR) * np.sin(np.pi * (i + 0.5) / n) ** 2
    if kind == "crop":
        lo, hi = overlap // 2, n - (overlap - overlap // 2)
        return np.where((i >= lo) & (i < hi), 1.0, CROP_OUTSIDE)
    raise ValueError(f"unknown window {kind!r}; use one of {', '.join(WINDOWS)}")


def blend_window_2d(
    shape: tuple[int, int], overlap: tuple[int, int], kind: str = "linear"
) -> np.ndarray:
    """(h, w) float32 separable window: the outer product of two :func:`blend_window`."""
    rows = blend_window(shape[0], overlap[0], kind)
    cols = blend_window(shape[1], overlap[1], kind)
    return np.outer(rows, cols).astype(np.float32)


@dataclass(frozen=True)
class CellGrid:
    """Where tiles lie on a slide map's cell grid: tile ``(i, j)`` covers cells
    ``[i * stride_r, i * stride_r + tile_r)`` x ``[j * stride_c, j * stride_c + tile_c)``
    (the slide engine's grid, :mod:`histoview.explain.slide_grid`, in map cells).

    Attributes:
        tile: (tile_r, tile_c) cells of one tile's map.
        overlap: cells shared with each neighbour per axis (stride = tile - overlap).
        shape: (H, W) cells of the slide map (tiles past its edge are cropped).
        tiles: (rows, cols) of tiles, when the engine's grid says; None: as many as cover
            ``shape``.
    """

    tile: tuple[int, int]
    overlap: tuple[int, int]
    shape: tuple[int, int]
    tiles: tuple[int, int] | None = None

    @property
    def stride(self) -> tuple[int, int]:
        return (self.tile[0] - self.overlap[0], self.tile[1] - self.overlap[1])

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Tiles per axis (``tiles``, or as many as cover the map)."""
        if self.tiles is not None:
            return tuple(int(v) for v in self.tiles)
        return tuple(
            max(1, -(-(s - t) // st) + 1) for s, t, st in zip(self.shape, self.tile, self.stride)
        )

    def origin(self, i: int, j: int) -> tuple[int, int]:
        return (i * self.stride[0], j * self.stride[1])

    def owner(self, axis: int, cells: np.ndarray) -> np.ndarray:
        """The tile index (along ``axis``) whose centre is nearest each cell (the crop mosaic)."""
        half = self.overlap[axis] // 2
        last = self.grid_shape[axis] - 1
        return np.clip((np.asarray(cells) - half) // self.stride[axis], 0, last)


class BlendAccumulator:
    """Running ``sum(w * value)`` and ``sum(w)`` on a cell grid, for overlap blending.

    Args:
        weighted: (H, W, K) float32 array-like (numpy, zarr...) holding ``sum(w * value)``
            per channel, zeros to start.
        weight: (H, W) float32 array-like holding ``sum(w)``, zeros to start.
        window: (h, w) weights of one tile (:func:`blend_window_2d`).

    The arrays may be on disk (zarr): :meth:`add` reads and writes only the tile's box.
    Adding is not idempotent: the caller adds each tile once (or rebuilds from tiles kept).
    """

    def __init__(self, weighted: Any, weight: Any, window: np.ndarray) -> None:
        if tuple(weighted.shape[:2]) != tuple(weight.shape) or len(weighted.shape) != 3:
            raise ValueError(f"weighted {weighted.shape} and weight {weight.shape} do not match")
        self.weighted, self.weight = weighted, weight
        self.window = np.asarray(window, np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def add(self, row: int, col: int, values: np.ndarray) -> None:
        """Add one tile's (h, w, K) ``values`` with its top-left cell at (row, col).

        Parts outside the grid (a tile past the slide's edge, negative origins) are dropped.
        """
        values = np.asarray(values, np.float32)
        if values.ndim == 2:
            values = values[..., None]
        h, w = self.window.shape
        if values.shape[:2] != (h, w) or values.shape[2] != self.weighted.shape[2]:
            raise ValueError(f"tile values {values.shape} do not fit window {self.window.shape}")
        H, W = self.shape
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + h, H), min(col + w, W)
        if r1 <= r0 or c1 <= c0:
            return
        win = self.window[r0 - row : r1 - row, c0 - col : c1 - col]
        vals = values[r0 - row : r1 - row, c0 - col : c1 - col]
        box = (slice(r0, r1), slice(c0, c1))
        self.weighted[box] = np.asarray(self.weighted[box]) + win[..., None] * vals
        self.weight[box] = np.asarray(self.weight[box]) + win

    def blended(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(h, w, K) float32 ``sum(w * value) / sum(w)`` of a box, NaN where no tile lies."""
        num = np.asarray(self.weighted[rows, cols], np.float32)
        den = np.asarray(self.weight[rows, cols], np.float32)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan).astype(np.float32)


def tile_values(tile_maps: TileMaps, index: int) -> np.ndarray:
    """(h, w, 2) channels of one tile: its raw map and its target-class probability
    (constant over the tile, so blending makes it a smooth per-cell probability map)."""
    m = tile_maps.maps[index]
    p = np.full_like(m, tile_maps.probabilities[index, tile_maps.target_class])
    return np.stack([m, p], axis=-1)
