"""Scoring a nuclei detector against MoNuSeg's annotations (Kumar et al., 2017).

Used by ``benchmarks/bench_nuclei.py`` and the nuclei tests (``tests/test_nuclei.py``, which
find this folder through pytest's ``pythonpath`` setting); histoview itself never scores
detections, so this lives beside the benchmarks, not in the package.

* :func:`read_aperio_xml` and :func:`polygons_to_labels`: MoNuSeg's Aperio ImageScope XML
  outlines to an instance label image;
* :func:`match_detections`: one-to-one detection precision / recall / F1 of centroids;
* :func:`dice`: pixel Dice of two masks.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage import draw

__all__ = ["dice", "match_detections", "polygons_to_labels", "read_aperio_xml"]


def read_aperio_xml(path: str | Path) -> list[np.ndarray]:
    """Nuclei outlines of a MoNuSeg / Aperio ImageScope annotation file.

    Args:
        path: XML file; each ``<Region>`` is a nucleus, ``<Vertex X= Y=>`` in pixels.

    Returns:
        One (K, 2) float64 (row, col) polygon per region with at least 3 vertices.
    """
    polys = []
    for region in ET.parse(path).getroot().iter("Region"):
        verts = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
        if len(verts) >= 3:
            polys.append(np.asarray(verts, np.float64))
    return polys


def polygons_to_labels(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise (row, col) polygons to an int32 instance image (polygon i -> i + 1).

    Later polygons overwrite earlier ones where they overlap.
    """
    labels = np.zeros(shape, np.int32)
    for i, poly in enumerate(polygons):
        rr, cc = draw.polygon(poly[:, 0], poly[:, 1], shape)
        labels[rr, cc] = i + 1
    return labels


def _prf(tp: int, n_pred: int, n_true: int) -> dict:
    precision = tp / n_pred if n_pred else float(n_true == 0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "n_pred": n_pred,
        "n_true": n_true,
    }


def match_detections(
    pred_centroids: np.ndarray, truth: np.ndarray, *, radius_px: float | None = None
) -> dict:
    """One-to-one detection matching of predicted centroids against the truth.

    Two modes:

    * ``truth`` is an (H, W) integer instance image and ``radius_px`` is None: a prediction
      is a true positive when its (rounded) centroid falls inside a true nucleus that no
      other prediction has already claimed (each true nucleus matches at most once).
    * ``truth`` is an (M, 2) array of (row, col) centroids and ``radius_px`` is given: a
      prediction may match a true centroid within ``radius_px``; the one-to-one matching of
      maximum cardinality is used (Hopcroft-Karp, :func:`maximum_bipartite_matching`).

    Args:
        pred_centroids: (N, 2) (row, col) predicted centroids, pixels.
        truth: instance labels or true centroids, see above.
        radius_px: matching radius for centroid truth.

    Returns:
        dict with ``precision``, ``recall``, ``f1`` (floats) and ``tp``, ``fp``, ``fn``,
        ``n_pred``, ``n_true`` (ints). No predictions and no truth gives 1.0 everywhere;
        no truth gives recall 1.0 and precision 0.0 if anything was predicted.
    """
    pred = np.asarray(pred_centroids, np.float64).reshape(-1, 2)
    truth = np.asarray(truth)
    if radius_px is None:
        if truth.ndim != 2 or not (np.issubdtype(truth.dtype, np.integer) or truth.dtype == bool):
            raise ValueError("truth must be an (H, W) integer label image when radius_px is None")
        true_ids = np.unique(truth)
        n_true = int((true_ids > 0).sum())
        rc = np.round(pred).astype(np.int64)
        inside = ((rc >= 0) & (rc < np.array(truth.shape))).all(axis=1)
        hit = truth[rc[inside, 0], rc[inside, 1]]
        tp = int(np.unique(hit[hit > 0]).size)
        return _prf(tp, len(pred), n_true)
    true_c = truth.astype(np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(true_c) == 0:
        return _prf(0, len(pred), len(true_c))
    pairs = cKDTree(pred).query_ball_tree(cKDTree(true_c), r=float(radius_px))
    rows = np.repeat(np.arange(len(pred)), [len(p) for p in pairs])
    cols = np.fromiter((j for p in pairs for j in p), np.int64, count=len(rows))
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(pred), len(true_c)))
    match = maximum_bipartite_matching(graph, perm_type="column")
    return _prf(int((match >= 0).sum()), len(pred), len(true_c))


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Pixel Dice 2|A & B| / (|A| + |B|) of two masks (non-zero = foreground).

    Returns 1.0 when both masks are empty.
    """
    a, b = np.asarray(pred_mask) != 0, np.asarray(true_mask) != 0
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
