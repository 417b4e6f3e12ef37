"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pointing_game(dense: np.ndarray, mask: np.ndarray) -> bool:
    """Hit when the map's maximum (centre of the arg-max region) lies in the ground-truth mask."""
    peak = dense >= dense.max()
    rows, cols = np.nonzero(peak)
    r, c = int(np.median(rows)), int(np.median(cols))
    return bool(mask[r, c])


def map_auc(dense: np.ndarray, mask: np.ndarray) -> float:
    """Pixel-level ROC AUC of a map against a boolean mask."""
    from histoview.training.metrics import roc_auc

    return roc_auc(mask.reshape(-1), dense.reshape(-1))


def top_precision(dense: np.ndarray, mask: np.ndarray, fraction: float = 0.1) -> float:
    """Share of ground truth among the map's top ``fraction`` of pixels (ties at the cut
    included; the share of the mask itself is what a random map gets)."""
    values, truth = np.asarray(dense).reshape(-1), np.asarray(mask, bool).reshape(-1)
    k = max(1, int(round(fraction * values.size)))
    cut = np.partition(values, values.size - k)[values.size - k]
    return float(truth[values >= cut].mean())
