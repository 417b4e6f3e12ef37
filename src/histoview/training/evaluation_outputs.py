"""What ``histoview evaluate`` writes: metrics JSON and CSV, per-image predictions and the
figures, each through the one atomic writer (:mod:`histoview.io.files`)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

#: per-class columns of metrics.csv (and of the evaluation view's table)
PER_CLASS_COLUMNS = (
    "class",
    "support",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "iba",
    "gmean",
)
CSV_COLUMNS = (*PER_CLASS_COLUMNS, "accuracy", "balanced_accuracy")


def write_evaluation(
    out_dir: str | os.PathLike,
    result: dict[str, Any],
    y: np.ndarray,
    probs: np.ndarray,
    samples: list,
) -> dict[str, Path]:
    """Write metrics.json/.csv, predictions.csv and the three figures; returns their paths."""

    from histoview.io.files import write_text
    from histoview.training.figures import save_figure

    out = Path(out_dir)
    classes = result["classes"]
    files = {
        "metrics_json": write_text(
            out / "metrics.json", json.dumps(_finite(result), indent=2, default=_json_default)
        )
    }
    files["metrics_csv"] = write_metrics_csv(out / "metrics.csv", result)
    files["predictions_csv"] = _write_predictions(
        out / "predictions.csv", samples, y, probs, classes, result["metrics"]
    )
    for key, fig in evaluation_figures(result, y, probs).items():
        files[f"{key}_png"] = save_figure(fig, out / f"{key}.png")
    return files


def evaluation_figures(result: dict[str, Any], y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The evaluation's figures (matplotlib Figures): confusion matrix, ROC and PR curves."""
    from histoview.training.figures import confusion_matrix_figure, pr_figure, roc_figure

    classes = result["classes"]
    title = f"{result['model']} on {result['data']['layout']} ({result['split']})"
    return {
        "confusion_matrix": confusion_matrix_figure(
            result["confusion_matrix"], classes, title=title
        ),
        "roc": roc_figure(y, probs, classes, threshold=result["threshold"]),
        "pr": pr_figure(y, probs, classes),
    }


def write_metrics_csv(
    path: str | os.PathLike, result: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """One row per class, then ``overall`` (macro averages, accuracy, balanced accuracy).

    An existing ``path`` is kept and the table gets a numbered name unless ``overwrite``;
    returns the path written."""
    from histoview.io.files import atomic_write

    out = atomic_write(path, "w", overwrite=overwrite, newline="")
    with out as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for name, pc in result["per_class"].items():
            writer.writerow([name] + [_fmt(pc.get(c)) for c in CSV_COLUMNS[1:]])
        overall = result["overall"]
        writer.writerow(["overall", overall["n"]] + [_fmt(overall.get(c)) for c in CSV_COLUMNS[2:]])
    return out.path


def _write_predictions(path: Path, samples, y, probs, classes, metrics) -> Path:
    from histoview.io.files import atomic_write

    threshold = metrics.get("threshold")
    pred = (probs[:, 1] >= threshold).astype(int) if threshold is not None else probs.argmax(1)
    out = atomic_write(path, "w", newline="")
    with out as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient", "true", "predicted"] + [f"p_{c}" for c in classes])
        for s, t, p, row in zip(samples, y, pred, probs):
            writer.writerow(
                [s.key, s.patient or "", classes[t], classes[p]] + [f"{v:.6f}" for v in row]
            )
    return out.path


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _finite(obj):
    """NaN (e.g. the ROC AUC of a class absent from the data) as null: strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
