"""Agreement between explanation methods, measured on a common grid.

Methods place their importance on different elements (patches, nuclei, map
pixels), so they are compared after rasterising each one with
:meth:`~histoview.explain.base.Explanation.to_dense` onto the same (h, w)
grid (by default the image downsampled until its longer side is at most
:data:`DEFAULT_MAX_SIDE` pixels). Pixels an explanation does not cover
(background patches, tissue between nuclei) get 0, the lowest importance.

Two measures, as used to compare saliency methods (e.g. Adebayo et al.,
"Sanity checks for saliency maps", NeurIPS 2018, Sec. 3, which reports both
Spearman rank correlation and top-k overlap):

* :func:`spearman` - Spearman's rank correlation of the two maps' pixels,
  ties given their average rank (``scipy.stats.rankdata(method="average")``),
  i.e. Pearson's correlation of the ranks;
* :func:`topk_overlap` - Jaccard index (intersection over union) of the
  top ``fraction`` of pixels of each map.

:func:`agreement_table` gives both for every pair of methods as a
JSON-serialisable record (undefined values, e.g. for a constant map, are
``None``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from histoview.explain.base import Explanation

#: longer side of the default common grid, in pixels
DEFAULT_MAX_SIDE = 256

Explanations = Sequence[Explanation] | Mapping[str, Explanation]


def method_labels(explanations: Sequence[Explanation]) -> list[str]:
    """One distinct label per explanation: the method, with the model where methods repeat."""
    return distinct_labels([e.method for e in explanations], explanations)


def distinct_labels(names: Sequence[str], explanations: Sequence[Explanation]) -> list[str]:
    """``names`` (one per explanation) made distinct: the model added where a name repeats,
    then ``#k`` where name and model repeat."""
    names = list(names)
    labels = [n if names.count(n) == 1 else f"{n} ({e.model})" for n, e in zip(names, explanations)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def _named(explanations: Explanations) -> dict[str, Explanation]:
    if isinstance(explanations, Mapping):
        return {str(k): v for k, v in explanations.items()}
    explanations = list(explanations)
    return dict(zip(method_labels(explanations), explanations))


def default_shape(image_shape: Sequence[int], max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """``image_shape`` (h, w) scaled down (never up) so that its longer side is <= ``max_side``."""
    h, w = int(image_shape[0]), int(image_shape[1])
    scale = min(1.0, max_side / max(h, w, 1))
    return max(1, round(h * scale)), max(1, round(w * scale))


def common_maps(
    explanations: Explanations, shape: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Rasterise every explanation on one (h, w) grid.

    Args:
        explanations: a sequence (labelled by :func:`method_labels`) or a mapping
            name -> explanation.
        shape: the common grid; default :func:`default_shape` of the first explanation's image.

    Returns:
        name -> (h, w) float32 map of raw (not normalised) importance, 0 where uncovered.

    Raises:
        ValueError: no explanations, or images of different aspect ratios (not the same image).
    """
    named = _named(explanations)
    if not named:
        raise ValueError("no explanations to compare")
    shapes = {name: e.image_shape for name, e in named.items()}
    ref_name, ref = next(iter(shapes.items()))
    for name, s in shapes.items():
        # Levels of one pyramid differ in size but not in aspect ratio.
        if abs(s[0] / s[1] - ref[0] / ref[1]) > 0.02 * ref[0] / ref[1]:
            raise ValueError(
                f"{name} explains an image of {s[0]} x {s[1]} pixels, "
                f"{ref_name} one of {ref[0]} x {ref[1]}: not the same image"
            )
    shape = tuple(shape) if shape is not None else default_shape(ref)
    out = {}
    for name, e in named.items():
        m = np.asarray(e.to_dense(shape), np.float32)
        out[name] = np.where(np.isfinite(m), m, 0).astype(np.float32)
    return out


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] (float32); a constant map gives zeros, NaN stays NaN."""
    m = np.asarray(m, np.float32)
    finite = np.isfinite(m)
    if not finite.any():
        return np.zeros_like(m)
    lo, hi = float(m[finite].min()), float(m[finite].max())
    if hi <= lo:
        return np.where(finite, 0, m).astype(np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size} pixels (use common_maps)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("maps have non-finite values")
    return a, b


def _centred_ranks(m: np.ndarray) -> np.ndarray:
    """Average ranks of a map's pixels (ties at their mean rank), minus their mean."""
    from scipy.stats import rankdata

    r = rankdata(np.asarray(m, np.float64).ravel(), method="average")
    return r - r.mean()


def _rank_correlation(ra: np.ndarray, rb: np.ndarray) -> float:
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0:
        return float("nan")
    return float(np.clip((ra @ rb) / denom, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' pixels, ties at their average rank.

    Returns NaN when either map is constant (the correlation is undefined).
    """
    a, b = _check_pair(a, b)
    return _rank_correlation(_centred_ranks(a), _centred_ranks(b))


def top_fraction_mask(m: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Boolean mask of the top ``fraction`` of pixels of ``m``.

    Pixels tied with the k-th largest value (``k = ceil(fraction * size)``) are all
    included, so the choice never depends on pixel order; pixels at the map's
    minimum (its floor, e.g. uncovered background) are never "top", so a constant
    map has no top pixels.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    m = np.asarray(m, np.float64)
    flat = m.ravel()
    k = max(1, math.ceil(fraction * flat.size))
    kth = np.partition(flat, flat.size - k)[flat.size - k]
    return (m >= kth) & (m > flat.min())


def topk_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    """Jaccard index (IoU) of the top ``fraction`` of pixels of each map.

    Top pixels as in :func:`top_fraction_mask`; NaN when neither map has any (both constant).
    """
    a, b = _check_pair(a, b)
    return _mask_iou(top_fraction_mask(a, fraction), top_fraction_mask(b, fraction))


def _mask_iou(ma: np.ndarray, mb: np.ndarray) -> float:
    union = int(np.count_nonzero(ma | mb))
    if union == 0:
        return float("nan")
    return int(np.count_nonzero(ma & mb)) / union


def _json_number(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 6)


def agreement_table(
    explanations: Explanations, *, shape: tuple[int, int] | None = None, fraction: float = 0.1
) -> dict[str, Any]:
    """Pairwise agreement of all methods on one image, as a JSON-serialisable record.

    Args:
        explanations: a sequence or a mapping name -> explanation (of the same image).
        shape: common grid (default :func:`default_shape`).
        fraction: top fraction for :func:`topk_overlap`.

    Returns:
        ``{"methods": [...], "models": [...], "explains": [...], "shape": [h, w],
        "topk_fraction": f, "spearman": [[...]], "topk_iou": [[...]]}``; ``explains``: the
        class each map explains (two maps of different classes answer different questions:
        :func:`class_mismatch`); the matrices are symmetric, indexed like ``methods``;
        undefined entries are ``None``.
    """
    named = _named(explanations)
    maps = common_maps(named, shape)
    names = list(maps)
    n = len(names)
    rho = np.full((n, n), np.nan)
    iou = np.full((n, n), np.nan)
    # each map's ranks and top pixels once, not once per pair
    flat = [_check_pair(maps[k], maps[k])[0] for k in names]
    ranks = [_centred_ranks(m) for m in flat]
    tops = [top_fraction_mask(m, fraction) for m in flat]
    for i in range(n):
        for j in range(i, n):
            rho[i, j] = rho[j, i] = _rank_correlation(ranks[i], ranks[j])
            iou[i, j] = iou[j, i] = _mask_iou(tops[i], tops[j])
    first = next(iter(maps.values()))
    return {
        "methods": names,
        "models": [named[k].model for k in names],
        "explains": [_explained_class(named[k]) for k in names],
        "shape": list(first.shape),
        "topk_fraction": float(fraction),
        "spearman": [[_json_number(v) for v in row] for row in rho],
        "topk_iou": [[_json_number(v) for v in row] for row in iou],
    }


def _explained_class(expl) -> str:
    classes, target = tuple(expl.classes), int(expl.target_class)
    return str(classes[target]) if 0 <= target < len(classes) else f"class {target}"


def class_mismatch(agreement: dict[str, Any], names: dict[str, str] | None = None) -> str | None:
    """One line when the maps of an agreement record explain different classes (say
    "graph: benign; amil, gradcam: malignant"), else None. Such pairs are marked in the
    tables: how much two maps agree says little when they explain different decisions."""
    explains = agreement.get("explains")
    if not explains or len(set(explains)) < 2:
        return None
    groups: dict[str, list[str]] = {}
    for method, cls in zip(agreement["methods"], explains):  # ``names``: method -> shown name
        groups.setdefault(cls, []).append((names or {}).get(method, method))
    return "; ".join(f"{', '.join(ms)}: {cls}" for cls, ms in groups.items())
