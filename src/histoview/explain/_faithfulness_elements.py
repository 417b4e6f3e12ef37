"""The elements an explanation ranks, for deletion and insertion curves (Petsiuk et al., RISE,
BMVC 2018, Sec. 4.1): their order of importance and the pixels each covers.

Elements are patches (:class:`PatchGrid`), nuclei (:class:`NucleiPoints`) or the pixels
of a map (:class:`DenseMap`); ties in the ranking are broken by a fixed pseudo-random order,
not by position. :func:`image_digest` keys the per-image caches of
:mod:`histoview.explain.faithfulness` and :mod:`histoview.explain._faithfulness_inputs`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.preprocessing.patches import PatchGrid


def image_digest(image: np.ndarray) -> str:
    """A content key of an array (shape, dtype and bytes), for per-image caches."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(str((image.shape, image.dtype.str)).encode(), digest_size=16)
    h.update(memoryview(image).cast("B"))
    return h.hexdigest()


def element_ranks(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rank of each element (0 = most important); ties in a fixed pseudo-random order."""
    values = np.asarray(values, np.float64).ravel()
    values = np.where(np.isfinite(values), values, -np.inf)
    tiebreak = np.random.default_rng(seed).permutation(len(values))
    order = np.lexsort((tiebreak, -values))
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    return rank


def element_rank_map(
    expl: Explanation, shape: tuple[int, int], *, seed: int = 0
) -> tuple[np.ndarray, int, str]:
    """Per pixel of an image of ``shape``: the rank of the most important element covering it.

    Returns ``(rank_map, num_elements, kind)``; pixels covered by no element hold
    ``num_elements`` (never removed).
    """
    geom = expl.geometry
    H, W = shape
    gh, gw = geom.image_shape
    sy, sx = H / gh, W / gw
    rank = element_ranks(expl.values, seed)
    n = len(rank)
    out = np.full((H, W), n, np.int64)
    if isinstance(geom, PatchGrid):
        ph, pw = geom.patch_size
        for (r, c), k in zip(geom.origins, rank):
            r0, c0 = int(round(r * sy)), int(round(c * sx))
            r1, c1 = int(round((r + ph) * sy)), int(round((c + pw) * sx))
            np.minimum(out[r0:r1, c0:c1], k, out=out[r0:r1, c0:c1])
        return out, n, "patches"
    if isinstance(geom, NucleiPoints):
        from skimage.draw import disk, polygon

        for i, k in enumerate(rank):
            if geom.outlines and len(geom.outlines[i]) >= 3:
                poly = np.asarray(geom.outlines[i], np.float64)
                rr, cc = polygon(poly[:, 0] * sy, poly[:, 1] * sx, (H, W))
            else:
                r, c = geom.centroids[i]
                rr, cc = disk((r * sy, c * sx), max(geom.radius * min(sy, sx), 1.0), shape=(H, W))
            out[rr, cc] = np.minimum(out[rr, cc], k)
        return out, n, "nuclei"
    if isinstance(geom, DenseMap):
        h, w = np.shape(expl.values)
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return rank.reshape(h, w)[rows[:, None], cols[None, :]], n, "pixels"
    raise TypeError(f"cannot perturb elements of a {type(geom).__name__}")


def element_kind(expl: Explanation) -> str:
    geom = expl.geometry
    if isinstance(geom, PatchGrid):
        return "patches"
    if isinstance(geom, NucleiPoints):
        return "nuclei"
    if isinstance(geom, DenseMap):
        return "pixels"
    raise TypeError(f"cannot perturb elements of a {type(geom).__name__}")
