"""Confidence intervals by patient: the bootstrap that respects who the images came from.

Patches of one patient are not independent (one slide, one stain, one tumour), so an
interval from resampling patches would be far too narrow. :func:`patient_bootstrap`
resamples *patients* with replacement (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, ch. 13, percentile intervals), each drawn patient bringing all its
patches, and recomputes the metric on the pooled patches of each replicate. With
``strata`` (e.g. whether a patient has any non-IDC patch) the patients are resampled within
each stratum, so every replicate keeps as many patients of each kind as the data: a
class that only a few patients carry is then never missing from a replicate.

With few patients per stratum the intervals are wide and still optimistic (a stratum of
one patient does not vary at all): they say how much the figure moves between patients
like these, not what a new hospital would see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: bootstrap replicates by default
N_BOOT = 2000


def patient_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    scores: np.ndarray,
    patients: Sequence[str],
    *,
    strata: dict[str, str] | None = None,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """The metric and its percentile bootstrap interval, patients resampled.

    Args:
        metric: ``metric(y_true, scores) -> float`` (NaN where undefined, e.g. one class).
        y_true: (N,) labels.
        scores: (N,) scores or decisions, whatever ``metric`` takes.
        patients: (N,) the patient of each element.
        strata: patient -> stratum; patients are resampled within their stratum.
        n_boot: replicates.
        level: the interval's coverage.
        seed: the resampling's seed (fixed: the same call gives the same interval).

    Returns:
        ``{"value", "low", "high", "replicates"}``: the metric on all the data, the interval's
        ends, and the replicates where the metric was defined (finite).
    """
    y, s = np.asarray(y_true), np.asarray(scores)
    pats = np.asarray([str(p) for p in patients])
    names = sorted(set(pats.tolist()))
    index = {p: np.nonzero(pats == p)[0] for p in names}
    groups: dict[str, list[str]] = {}
    for p in names:
        groups.setdefault((strata or {}).get(p, ""), []).append(p)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        drawn = [
            index[members[k]]
            for members in groups.values()
            for k in rng.integers(len(members), size=len(members))
        ]
        idx = np.concatenate(drawn)
        v = float(metric(y[idx], s[idx]))
        if np.isfinite(v):
            values.append(v)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail]) if values else (np.nan, np.nan)
    return {
        "value": float(metric(y, s)),
        "low": float(low),
        "high": float(high),
        "replicates": len(values),
    }


def balanced_accuracy(y_true: np.ndarray, decided: np.ndarray) -> float:
    """Mean of sensitivity and specificity of binary decisions (NaN without both classes)."""
    y, d = np.asarray(y_true) == 1, np.asarray(decided) == 1
    if y.all() or not y.any():
        return float("nan")
    return float((d[y].mean() + (~d[~y]).mean()) / 2)


def f1_positive(y_true: np.ndarray, decided: np.ndarray) -> float:
    """F1 of the positive class (IDC), the figure Cruz-Roa et al. 2014 and Janowczyk &
    Madabhushi 2016 report (NaN when there is nothing to count)."""
    y, d = np.asarray(y_true) == 1, np.asarray(decided) == 1
    tp, fp, fn = (y & d).sum(), (~y & d).sum(), (y & ~d).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else float("nan")


def roc_auc_or_nan(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (:func:`~histoview.training.metrics.roc_auc`), NaN without both classes."""
    from histoview.training.metrics import roc_auc

    y = np.asarray(y_true) == 1
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc(y, np.asarray(scores, np.float64)))
