"""Array <-> tensor conversion, normalisation and the papers' augmentations.

A-MIL (Patil et al., 2019) augments with horizontal/vertical flips and 90/180/270-degree
rotations; together these are the eight symmetries of the square (the
dihedral group D4), which also serve as 8-fold test-time augmentation
(as in the CSPResNet50-FPN-SE paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the eight symmetries of the square as (k rotations by 90 degrees, flip left-right after)
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(array, k: int, flip: bool):
    """Rotate by ``k`` x 90 degrees then optionally flip; works on numpy (..., H, W, C)
    channel-last images and on torch (..., C, H, W) tensors (spatial dims last two)."""
    if isinstance(array, np.ndarray):
        out = np.rot90(array, k, axes=(-3, -2))
        return np.flip(out, axis=-2) if flip else out
    import torch

    out = torch.rot90(array, k, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if flip else out


def inverse_dihedral(array, k: int, flip: bool):
    """Undo :func:`dihedral` on a torch (..., H, W) map (spatial dims last two)."""
    import torch

    out = torch.flip(array, dims=(-1,)) if flip else array
    return torch.rot90(out, -k, dims=(-2, -1))


def random_dihedral(array, rng: np.random.Generator):
    k, flip = DIHEDRAL[int(rng.integers(8))]
    return dihedral(array, k, flip)


def to_tensor(
    image: np.ndarray,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
):
    """(H, W, 3) or (N, H, W, 3) uint8 RGB -> float32 (N?, 3, H, W) tensor in [0, 1], normalised.

    ``size`` resizes (bilinear, antialiased) to (height, width).
    """
    import torch
    import torch.nn.functional as F

    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # torch.from_numpy wants writable memory (e.g. zarr/napari views)
        arr = arr.copy()
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, got dtype {arr.dtype}")
    t = torch.from_numpy(arr).float().div_(255.0)
    single = t.ndim == 3
    if single:
        t = t[None]
    t = t.permute(0, 3, 1, 2).contiguous()
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=t.dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=t.dtype).view(1, 3, 1, 1)
        t = (t - m) / s
    return t[0] if single else t
