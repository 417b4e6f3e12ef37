"""Small pieces shared by the training dock's modules (:mod:`histoview.viewer._train_widget`).

* the devices and the default output folder of a run (the starting settings per model come
  from the core, :func:`histoview.training.recipes.recipe_for`);
* plain-text summaries (dataset, split, metrics, durations);
* Qt helpers: a row of widgets, a scroll area, a figure canvas at the figure's own size, a
  wrapped label.

The tabs are widgets of their own: the run view in :mod:`histoview.viewer._train_run_view`,
the model library in :mod:`histoview.viewer._train_library`, the settings form in
:mod:`histoview.viewer._train_settings`, the evaluation in
:mod:`histoview.viewer._evaluation_view`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel


def devices() -> list[str]:
    """Devices that exist here, the default first: CUDA when available, else the CPU."""
    import torch

    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def default_run_dir(name: str) -> Path:
    """A new folder under the user data folder's ``runs`` (honours ``HISTOVIEW_DATA_DIR``)."""
    from histoview.models.library import user_library_dir

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return user_library_dir().parent / "runs" / f"{name}-{stamp}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def summary_text(summary: dict[str, Any]) -> str:
    """What a dataset holds, in a few lines (from ``Dataset.summary()``)."""
    layouts = {
        "breakhis": "BreakHis",
        "bach": "BACH (class folders)",
        "folder": "one folder per class",
        "phantom": "synthetic phantoms (generated)",
    }
    counts = ", ".join(f"{c}: {n}" for c, n in summary["images_per_class"].items())
    patients = summary.get("patients")
    lines = [
        f"Layout: {layouts.get(summary['layout'], summary['layout'])}",
        f"Classes ({len(summary['classes'])}): {counts}",
        f"Images: {summary['images']}",
        f"Patients: {patients}" if patients else "Patients: not known (the split is by image)",
    ]
    if summary.get("magnifications"):
        lines.append(
            "Magnifications: " + ", ".join(f"{m} {n}" for m, n in summary["magnifications"].items())
        )
    return "\n".join(lines)


def split_text(settings: dict[str, Any], parts, has_patients: bool = True) -> str:
    """The split a run will use, e.g. ``"Split by patient (0.7/0.15/0.15, seed 0): 50
    training, 11 validation, 11 test images"`` (by image when the data has no patients)."""
    sizes = ", ".join(
        f"{len(p)} {name}" for p, name in zip(parts, ("training", "validation", "test"))
    )
    how = f"{'/'.join(f'{f:g}' for f in settings['fractions'])}, seed {settings['seed']}"
    if settings["by"] == "patient" and not has_patients:
        return f"Split by image (no patient ids; {how}): {sizes} images"
    return f"Split by {settings['by']} ({how}): {sizes} images"


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


def figure_canvas(fig, min_width: int = 0):
    """A Qt canvas for ``fig`` never drawn smaller than the figure's own size (its labels
    were laid out for that size: squeezed into a narrow dock they overlap); a scroll area
    around it shows the rest."""
    canvas = _canvas_class()(fig)
    w, h = (fig.get_size_inches() * fig.dpi).round().astype(int)
    canvas.setMinimumSize(max(int(w), min_width), int(h))
    return canvas


METRIC_NAMES = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("roc_auc", "ROC AUC"),
    ("f1_macro", "F1 (macro)"),
)


def metrics_text(title: str, metrics: dict[str, Any]) -> str:
    """One line of a split's metrics. A value that cannot be computed (ROC AUC of a split
    with one class) reads "undefined", not "nan"; a split that lacks some classes says so,
    as its balanced accuracy is then the mean recall of the classes it has."""
    if not metrics:
        return f"{title}: none (split too small)"
    vals = ", ".join(
        f"{label} {_value(metrics[k])}"
        for k, label in METRIC_NAMES
        if isinstance(metrics.get(k), (int, float))
    )
    n = metrics.get("n")
    line = f"{title}{f' ({n} images)' if n else ''}: {vals}"
    missing = missing_classes(metrics)
    if missing:
        line += (
            f" - no {', '.join(missing)} images in this split: balanced accuracy is the "
            "recall of the classes it has, ROC AUC undefined"
        )
    return line


def missing_classes(metrics: dict[str, Any]) -> list[str]:
    """The classes with no image in the split the ``metrics`` are of (rows of its confusion
    matrix that sum to 0)."""
    cm, names = metrics.get("confusion_matrix"), metrics.get("classes")
    if not cm or not names:
        return []
    return [str(name) for name, row in zip(names, cm) if sum(row) == 0]


def _value(v: float) -> str:
    return "undefined" if v != v else f"{v:.3f}"  # v != v: NaN


def _canvas_class():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

    return FigureCanvasQTAgg


def _wrapped_label(text: str, style: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(style)
    return label
