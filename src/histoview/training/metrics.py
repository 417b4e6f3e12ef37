"""Classification metrics, per class and overall (numpy only).

``classification_metrics(y_true, probabilities)`` returns accuracy, balanced
accuracy, macro precision / recall (sensitivity) / specificity / F1, ROC AUC
and PR AUC (average precision; one-vs-rest macro averages for more than two
classes), the geometric mean of per-class recalls (GMean), the index of
balanced accuracy (IBA, Garcia et al. 2009, alpha = 0.1, on the
positive class for binary tasks, macro one-vs-rest otherwise) and the
confusion matrix (rows: true class, columns: predicted class).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _ranked_counts(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """At each distinct score, from the highest down: true positives, predicted positives,
    the score itself; plus the number of positives."""
    y = np.asarray(y_true, bool)
    s = np.asarray(scores, float)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return np.cumsum(y)[distinct], distinct + 1, s[distinct], int(y.sum())


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds) for a binary problem."""
    tps, predicted, cut, positives = _ranked_counts(y_true, scores)
    negatives = len(np.asarray(y_true)) - positives
    tpr = np.r_[0.0, tps / max(positives, 1)]
    fpr = np.r_[0.0, (predicted - tps) / max(negatives, 1)]
    return fpr, tpr, np.r_[np.inf, cut]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    y = np.asarray(y_true, bool)
    if y.all() or (~y).all():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) from the highest score down, starting at (1, 0)."""
    tps, predicted, _, positives = _ranked_counts(y_true, scores)
    return np.r_[1.0, tps / predicted], np.r_[0.0, tps / max(positives, 1)]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """PR AUC as average precision (step-wise, as scikit-learn computes it)."""
    y = np.asarray(y_true, bool)
    if not y.any():
        return float("nan")
    precision, recall = precision_recall_curve(y, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def youden_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    Predict positive when ``score >= threshold``.
    """
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    j = tpr - fpr
    j[0] = -np.inf  # the (0, 0) point at threshold +inf
    best = np.flatnonzero(j == j.max())
    # Every threshold in (thresholds[last + 1], thresholds[first]] reaches the best J;
    # take the middle of that interval rather than its edge, so an easy, well-separated
    # validation set does not yield a threshold glued to the highest positive score.
    hi = thresholds[best[0]]
    lo = thresholds[best[-1] + 1] if best[-1] + 1 < len(thresholds) else min(0.0, hi)
    return float((hi + lo) / 2)


def _safe_div(a, b):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def classification_metrics(
    y_true,
    probabilities,
    class_names: list[str] | tuple[str, ...] | None = None,
    *,
    threshold: float | None = None,
    alpha: float = 0.1,
) -> dict:
    """All metrics for predictions ``probabilities`` (n, C) against labels ``y_true`` (n,).

    For binary tasks ``threshold`` (e.g. Youden's J from validation) decides the
    positive class (index 1) instead of argmax.
    """
    y = np.asarray(y_true, int)
    p = np.asarray(probabilities, float)
    n, C = p.shape
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(C)]
    if C == 2 and threshold is not None:
        pred = (p[:, 1] >= threshold).astype(int)
    else:
        pred = p.argmax(1)
    cm = confusion_matrix(y, pred, C)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    aucs = np.array([roc_auc(y == c, p[:, c]) for c in range(C)])
    aps = np.array([average_precision(y == c, p[:, c]) for c in range(C)])
    present = cm.sum(1) > 0
    gmean = float(np.prod(recall[present]) ** (1.0 / max(present.sum(), 1)))
    iba_c = (1 + alpha * (recall - specificity)) * recall * specificity
    out = {
        "n": int(n),
        "accuracy": float(tp.sum() / max(n, 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "sensitivity": float(recall[1]) if C == 2 else float(recall.mean()),
        "specificity": float(specificity[1]) if C == 2 else float(specificity.mean()),
        "f1_macro": float(f1.mean()),
        "roc_auc": float(aucs[1])
        if C == 2
        else float(np.nanmean(aucs))
        if np.isfinite(aucs).any()
        else float("nan"),
        "pr_auc": float(aps[1])
        if C == 2
        else float(np.nanmean(aps))
        if np.isfinite(aps).any()
        else float("nan"),
        "gmean": gmean,
        "iba": float(iba_c[1]) if C == 2 else float(iba_c.mean()),
        "confusion_matrix": cm.tolist(),
        "classes": names,
        "per_class": {
            names[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "specificity": float(specificity[c]),
                "f1": float(f1[c]),
                "roc_auc": float(aucs[c]),
                "pr_auc": float(aps[c]),
                "support": int(cm[c].sum()),
            }
            for c in range(C)
        },
    }
    if threshold is not None:
        out["threshold"] = float(threshold)
    return out


def evaluation_metrics(
    y_true, probabilities, class_names, *, threshold: float | None = None
) -> dict:
    """:func:`classification_metrics` plus the mean negative log-likelihood (``loss``) and,
    for the caller, ``_probs`` and ``_y``: what evaluating a split reports."""
    y = np.asarray(y_true, int)
    probs = np.asarray(probabilities)
    nll = (
        float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
        if len(y)
        else float("nan")
    )
    return classification_metrics(y, probs, class_names, threshold=threshold) | {
        "loss": nll,
        "_probs": probs,
        "_y": y,
    }
