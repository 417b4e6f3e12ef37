"""Patch grids and bags of patches for multiple-instance learning (A-MIL, Patil et al., 2019).

A-MIL (Patil et al., 2019: Ilse-style attention MIL on BreakHis and BACH) cuts each image into
non-overlapping patches: 28 x 28 with stride 28 on a 700 x 460 BreakHis image
(25 x 16 = 400 instances) and 124 x 124 on a 2048 x 1536 BACH image
(16 x 12 = 192 instances; 2048 / 124 = 16.5, the remainder is dropped).
Those settings are the named presets in :data:`PATCH_PRESETS`; any patch size
and stride can be given instead.

Every instance keeps its position (top-left corner, row and column, in the
pixel coordinates of level 0 of the image) so that per-instance results map
back onto the tissue, also when the bag was cut from a lower-resolution level
of a pyramid (positions are scaled by the level's downsample factor).

Background filtering (optional) drops patches that are mostly blank glass:
a pixel is glass when it is bright and unsaturated (HSV value > 0.85 and
saturation < 0.07, the usual H&E tissue-detection rule); a patch is background
when more than ``max_background`` of its pixels are glass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH_PRESETS: dict[str, dict[str, int]] = {
    # Patil et al., 2019, section III-A: BreakHis 700 x 460 -> 28 x 28 patches, stride 28.
    "breakhis": {"patch_size": 28, "stride": 28},
    # Patil et al., 2019, section III-A: BACH 2048 x 1536 -> 124 x 124 patches.
    "bach": {"patch_size": 124, "stride": 124},
}


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of a bag lie on the image.

    Attributes:
        origins: (N, 2) int64 top-left corners (row, col) in level-0 pixels.
        patch_size: (height, width) of one patch in level-0 pixels.
        image_shape: (height, width) of level 0.
        grid_shape: (rows, cols) of the full grid before background filtering.
        grid_index: (N, 2) int64 (row, col) of each patch in the full grid.
        level: pyramid level the patches were cut from.
        downsample: level-0 pixels per pixel of that level.
    """

    origins: np.ndarray
    patch_size: tuple[int, int]
    image_shape: tuple[int, int]
    grid_shape: tuple[int, int]
    grid_index: np.ndarray
    level: int = 0
    downsample: float = 1.0

    def __len__(self) -> int:
        return len(self.origins)

    def rasterize(
        self, values: np.ndarray, *, fill: float = 0.0, shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Paint each patch's value over its pixels: a float32 map of ``image_shape``.

        Pixels covered by no patch (background or the remainder at the
        border) get ``fill``. Overlapping patches (stride < size) average.
        ``shape`` (defaults to ``image_shape``) lets the caller paint at
        another resolution; positions are scaled accordingly.
        """
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(values) != len(self):
            raise ValueError(f"{len(values)} values for {len(self)} patches")
        H, W = self.image_shape
        out_h, out_w = shape or (H, W)
        sy, sx = out_h / H, out_w / W
        acc = np.zeros((out_h, out_w), np.float64)
        cnt = np.zeros((out_h, out_w), np.float64)
        ph, pw = self.patch_size
        for (r, c), v in zip(self.origins, values):
            r0, c0 = int(round(r * sy)), int(round(c * sx))
            r1, c1 = int(round((r + ph) * sy)), int(round((c + pw) * sx))
            acc[r0:r1, c0:c1] += v
            cnt[r0:r1, c0:c1] += 1
        out = np.full((out_h, out_w), fill, np.float64)
        np.divide(acc, cnt, out=out, where=cnt > 0)
        return out.astype(np.float32)

    def to_grid(self, values: np.ndarray, *, fill: float = np.nan) -> np.ndarray:
        """Values arranged on the (rows, cols) grid; filtered-out cells get ``fill``."""
        grid = np.full(self.grid_shape, fill, np.float32)
        grid[self.grid_index[:, 0], self.grid_index[:, 1]] = values
        return grid


def resolve_patch_settings(
    preset: str | None = None, patch_size: int | None = None, stride: int | None = None
) -> tuple[int, int]:
    """(patch_size, stride) from a named preset and/or explicit values (explicit wins)."""
    if preset is not None:
        if preset not in PATCH_PRESETS:
            raise ValueError(f"unknown patch preset {preset!r}; known: {', '.join(PATCH_PRESETS)}")
        base = PATCH_PRESETS[preset]
        patch_size = patch_size or base["patch_size"]
        stride = stride or base["stride"]
    if patch_size is None:
        raise ValueError("give a patch preset or a patch size")
    stride = stride or patch_size
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be positive, got {patch_size}, {stride}")
    return int(patch_size), int(stride)


def glass_fraction(patches: np.ndarray) -> np.ndarray:
    """Fraction of blank-glass pixels per patch; ``patches`` is (N, h, w, 3) uint8."""
    rgb = patches.astype(np.float32) / 255.0
    vmax = rgb.max(-1)
    vmin = rgb.min(-1)
    sat = np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1e-6), 0)
    glass = (vmax > 0.85) & (sat < 0.07)
    return glass.reshape(len(patches), -1).mean(1)


def extract_patches(
    image: np.ndarray,
    patch_size: int,
    stride: int | None = None,
    *,
    max_background: float | None = None,
    level: int = 0,
    downsample: float = 1.0,
    image_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, PatchGrid]:
    """Cut ``image`` (H, W, 3) into a bag of patches on a regular grid.

    Args:
        image: RGB array of the level the patches are cut from.
        patch_size, stride: in pixels of that level; stride defaults to patch_size.
        max_background: if given, drop patches whose glass fraction exceeds it
            (e.g. 0.9); at least one patch is always kept.
        level, downsample: which pyramid level ``image`` is and its downsample
            factor, so positions are stored in level-0 pixels.
        image_shape: level-0 (height, width); default ``image.shape[:2] * downsample``.

    Returns:
        ``(patches, grid)``: patches (N, patch_size, patch_size, 3) in the
        image's dtype and the :class:`PatchGrid` giving their positions.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    stride = stride or patch_size
    H, W = image.shape[:2]
    if H < patch_size or W < patch_size:
        raise ValueError(f"image of {H} x {W} pixels is smaller than one {patch_size}-pixel patch")
    rows = (H - patch_size) // stride + 1
    cols = (W - patch_size) // stride + 1
    # A strided view: no copy until the patches are selected.
    view = np.lib.stride_tricks.sliding_window_view(image, (patch_size, patch_size, 3))[
        ::stride, ::stride, 0
    ]
    view = view[:rows, :cols]
    gi = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    patches = view.reshape(rows * cols, patch_size, patch_size, 3)
    keep = np.ones(len(patches), bool)
    if max_background is not None:
        frac = glass_fraction(patches)
        keep = frac <= max_background
        if not keep.any():
            keep[np.argmin(frac)] = True
    patches = np.ascontiguousarray(patches[keep])
    gi = gi[keep]
    origins = (gi * stride * downsample).round().astype(np.int64)
    size = int(round(patch_size * downsample))
    full_shape = image_shape or (int(round(H * downsample)), int(round(W * downsample)))
    grid = PatchGrid(
        origins=origins,
        patch_size=(size, size),
        image_shape=tuple(full_shape),
        grid_shape=(rows, cols),
        grid_index=gi.astype(np.int64),
        level=level,
        downsample=float(downsample),
    )
    return patches, grid


def patch_labels_from_mask(
    grid: PatchGrid, mask: np.ndarray, *, min_fraction: float = 0.5
) -> np.ndarray:
    """Ground-truth label per patch: True when at least ``min_fraction`` of it is in ``mask``.

    ``mask`` is a level-0 (H, W) boolean array (e.g. a phantom's malignant mask).
    """
    mask = np.asarray(mask, bool)
    ph, pw = grid.patch_size
    out = np.empty(len(grid), bool)
    for i, (r, c) in enumerate(grid.origins):
        out[i] = mask[r : r + ph, c : c + pw].mean() >= min_fraction
    return out
