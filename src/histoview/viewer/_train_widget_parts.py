"""Pieces of the training dock (:mod:`histoview.viewer._train_widget`).

* the devices and the default output folder of a run (the starting settings per model come
  from the core, :func:`histoview.training.recipes.recipe_for`);
* plain-text summaries (dataset, split, metrics, durations);
* the run view: progress (a header the dock keeps above its tabs), live training curves,
  metrics, warnings and the confusion matrix;
* the model library panel (rename, delete, export, evaluate on a dataset).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)


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


def scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical scroll area that resizes it to its width."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(widget)
    return area


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
    if not metrics:
        return f"{title}: none (split too small)"
    vals = ", ".join(
        f"{label} {metrics[k]:.3f}"
        for k, label in METRIC_NAMES
        if isinstance(metrics.get(k), (int, float))
    )
    n = metrics.get("n")
    return f"{title}{f' ({n} images)' if n else ''}: {vals}"


def _canvas_class():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

    return FigureCanvasQTAgg


class LiveCurves:
    """Training loss per step and per epoch, validation balanced accuracy / AUC per epoch."""

    def __init__(self):
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5.0, 2.4), layout="constrained")
        self.canvas = _canvas_class()(self.figure)
        self.canvas.setMinimumHeight(240)
        ax, av = self.ax_loss, self.ax_val = self.figure.subplots(1, 2)
        (self._step_line,) = ax.plot([], [], lw=0.8, color="0.6", label="step")
        (self._epoch_line,) = ax.plot([], [], "o-", label="epoch mean")
        self._val_lines = {
            key: av.plot([], [], "o-", label=label)[0]
            for key, label in (("balanced_accuracy", "bal. acc."), ("roc_auc", "AUC"))
        }
        ax.set(title="training loss", xlabel="epoch")
        av.set(title="validation", xlabel="epoch", ylim=(0, 1.02))
        for a in (ax, av):
            a.legend(fontsize=7, loc="best")
            a.tick_params(labelsize=7)
        self.reset()

    def reset(self, history: list[dict] | None = None) -> None:
        """Clear the curves; a resumed run starts from the epochs it already has."""
        self.steps: list[tuple[float, float]] = []
        self.epochs = [
            {"epoch": h["epoch"], "train_loss": h.get("train_loss"), "val": h.get("val") or {}}
            for h in history or []
        ]
        self.redraw()

    def add_step(self, x: float, loss: float) -> None:
        self.steps.append((x, loss))
        self.redraw()

    def add_epoch(self, epoch: int, train_loss: float, val: dict) -> None:
        self.epochs.append({"epoch": epoch, "train_loss": train_loss, "val": val or {}})
        self.redraw()

    def redraw(self) -> None:
        # update the lines' data (no axes rebuild), then let Qt draw when it is idle
        self._step_line.set_data([x for x, _ in self.steps], [y for _, y in self.steps])
        self._epoch_line.set_data(
            [e["epoch"] for e in self.epochs], [e["train_loss"] for e in self.epochs]
        )
        for key, line in self._val_lines.items():
            pts = [
                (e["epoch"], e["val"][key])
                for e in self.epochs
                if isinstance(e["val"].get(key), (int, float))
            ]
            line.set_data([p[0] for p in pts], [p[1] for p in pts])
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        last = max([x for x, _ in self.steps[-1:]] + [e["epoch"] for e in self.epochs] + [1])
        self.ax_val.set_xlim(0, last + 0.5)
        self.canvas.draw_idle()


class RunView(QWidget):
    """Warnings, metrics, live curves and the confusion matrix of a run; its ``header``
    (progress bar, elapsed / remaining time, status line) is a separate widget the dock keeps
    in view above its tabs."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.progress = QProgressBar()
        self.time_label = QLabel("")
        self.status = _wrapped_label("")
        self.header = QWidget()
        top = QVBoxLayout(self.header)
        top.setContentsMargins(0, 0, 0, 0)
        for w in (self.progress, self.time_label, self.status):
            top.addWidget(w)
        self.curves = LiveCurves()
        self.warnings: list[str] = []
        self.warning_label = _wrapped_label("", "color: #d08000")
        self.results = _wrapped_label("")
        self.cm_figure = None
        self._pbar = None
        layout = QVBoxLayout(self)
        for w in (self.warning_label, self.results, self.curves.canvas):  # short text first
            layout.addWidget(w)
        self._cm_box = QVBoxLayout()
        layout.addLayout(self._cm_box)
        layout.addStretch(1)

    def begin(self, text: str, history: list[dict]) -> None:
        self.progress.setValue(0)
        self.time_label.setText("")
        self.results.setText("")
        self.warnings = []
        self.warning_label.setText("")
        self.set_figure(None)
        self.curves.reset(history)
        self.status.setText(text)

    def add_warning(self, text: str) -> None:
        """A warning of the run (a split too small...), kept in view until the next run."""
        if text not in self.warnings:
            self.warnings.append(text)
        self.warning_label.setText("\n".join(f"Warning: {w}." for w in self.warnings))

    def start(self, total: int, done: int, desc: str) -> None:
        """Progress across all epochs (``done`` steps already trained), also in napari's
        activity dock."""
        from napari.utils import progress

        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.close_pbar()
        self._pbar = progress(total=total, desc=desc)
        self._pbar.update(done)

    def step(self, ev: dict, steps: int) -> None:
        value = (ev["epoch"] - 1) * steps + ev["step"]
        if self._pbar is not None:
            self._pbar.update(max(value - self.progress.value(), 0))
        self.progress.setValue(value)
        self.time_label.setText(
            f"epoch {ev['epoch']}/{ev['epochs']}, step {ev['step']}/{ev['steps']}"
            f" - elapsed {fmt_duration(ev.get('elapsed'))}, "
            f"remaining about {fmt_duration(ev.get('eta'))}"
        )
        self.curves.add_step(ev["epoch"] - 1 + ev["step"] / ev["steps"], ev["loss"])

    def epoch_end(self, ev: dict) -> None:
        val = ev.get("val_metrics") or {}
        self.curves.add_epoch(ev["epoch"], ev["train_loss"], val)
        bacc = val.get("balanced_accuracy")
        self.status.setText(
            f"Epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f}"
            + (f", validation balanced accuracy {bacc:.3f}" if bacc is not None else "")
            + (" (best so far)" if ev.get("best") else "")
        )

    def show_report(self, report: dict, synthetic_warning: str) -> None:
        """Validation and test metrics, and the confusion matrix (test set, else validation)."""
        from histoview.training.figures import confusion_matrix_figure

        for text in report.get("warnings") or []:
            self.add_warning(text)
        val, test = report.get("validation") or {}, report.get("test") or {}
        lines = [
            metrics_text(f"Validation (best epoch {report.get('best_epoch')})", val),
            metrics_text("Test", test),
        ]
        lines += [synthetic_warning] if report.get("synthetic") else []
        self.results.setText("\n".join(lines))
        source, which = (test, "test") if test.get("confusion_matrix") else (val, "validation")
        if source.get("confusion_matrix"):
            args = (source["confusion_matrix"], source["classes"])
            title = f"Confusion matrix, {which} set ({source.get('n', '?')} images)"
            fig = confusion_matrix_figure(*args, title=title)
            if fig.get_size_inches()[0] * fig.dpi > self.width() - 30:  # a narrow dock
                fig = confusion_matrix_figure(*args, title=title, stacked=True)
            self.set_figure(fig)

    def set_figure(self, fig) -> None:
        while self._cm_box.count():
            item = self._cm_box.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.cm_figure = fig
        if fig is not None:
            self._cm_box.addWidget(figure_canvas(fig), 0, Qt.AlignLeft)

    def close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None


def _wrapped_label(text: str, style: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(style)
    return label


class LibraryPanel(QWidget):
    """The user model library and the bundled demo weights: rename, delete, export, evaluate.

    ``evaluate_requested`` carries the selected entry (the dock evaluates it on its dataset).
    The dialogs are methods (``_ask_text``, ``_confirm``, ``_ask_folder``) so tests replace them.
    """

    evaluate_requested = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entries: list = []
        self.model_list = QListWidget()
        self.model_list.setWordWrap(True)
        self.details = _wrapped_label("")
        self.details.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.status = _wrapped_label("")
        buttons = QHBoxLayout()
        self.rename_button = QPushButton("Rename...")
        self.delete_button = QPushButton("Delete...")
        self.export_button = QPushButton("Export...")
        self.refresh_button = QPushButton("Refresh")
        self.evaluate_button = QPushButton("Evaluate on dataset...")
        self.evaluate_button.setToolTip(
            "Metrics and figures on the dataset chosen in the Train tab"
        )
        for b in (
            self.rename_button,
            self.delete_button,
            self.export_button,
            self.evaluate_button,
            self.refresh_button,
        ):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(
            QLabel("Your models (trained here) and the bundled synthetic demo weights:")
        )
        layout.addWidget(self.model_list)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.model_list.currentRowChanged.connect(self._selection_changed)
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.export_button.clicked.connect(self.export_selected)
        self.refresh_button.clicked.connect(self.refresh)
        self.evaluate_button.clicked.connect(
            lambda *_: self.selected() is not None and self.evaluate_requested.emit(self.selected())
        )
        self.refresh()

    # -- dialogs (tests override these) ----------------------------------------------------------
    def _ask_text(self, title: str, label: str, text: str) -> str | None:
        value, ok = QInputDialog.getText(self, title, label, text=text)
        return value if ok else None

    def _confirm(self, title: str, question: str) -> bool:
        answer = QMessageBox.question(
            self, title, question, QMessageBox.Yes | QMessageBox.No, QMessageBox.No
        )
        return answer == QMessageBox.Yes

    def _ask_folder(self, title: str) -> str | None:
        return QFileDialog.getExistingDirectory(self, title) or None

    # -- list ---------------------------------------------------------------------------------
    def refresh(self, _checked=None) -> None:
        from histoview.models.library import list_checkpoints

        current = self.selected()
        self.entries = list_checkpoints()
        self.model_list.clear()
        for e in self.entries:
            self.model_list.addItem(e.label() + ("" if e.source == "user" else "  [bundled]"))
            self.model_list.item(self.model_list.count() - 1).setToolTip(str(e.path))
        if current is not None:
            self.select(current.name, current.source)
        self._selection_changed()

    def select(self, name: str, source: str = "user") -> bool:
        for i, e in enumerate(self.entries):
            if e.name == name and e.source == source:
                self.model_list.setCurrentRow(i)
                return True
        return False

    def selected(self):
        row = self.model_list.currentRow() if hasattr(self, "model_list") else -1
        return self.entries[row] if 0 <= row < len(self.entries) else None

    def _selection_changed(self, _row=None) -> None:
        e = self.selected()
        user = e is not None and e.source == "user"
        self.rename_button.setEnabled(user)
        self.delete_button.setEnabled(user)
        self.export_button.setEnabled(e is not None)
        self.evaluate_button.setEnabled(e is not None)
        if e is None:
            self.details.setText("")
            return
        metrics = e.meta.get("metrics") or {}
        data = e.meta.get("data") or {}
        lines = [
            f"{e.name}: {e.model}, classes {', '.join(e.meta.get('classes', []))}",
            f"data: {data.get('layout', '?')}, {data.get('images', '?')} images",
            metrics_text("validation", metrics.get("validation") or {}),
            metrics_text("test", metrics.get("test") or {}),
            f"file: {e.path}",
        ]
        if e.synthetic:
            lines.append("Synthetic: trained on generated phantom images, not on patient data.")
        self.details.setText("\n".join(lines))

    def _changed(self, message: str) -> None:
        from histoview.viewer._explain_widget import refresh_all

        self.refresh()
        refresh_all()
        self.status.setText(message)

    # -- actions ------------------------------------------------------------------------------
    def rename_selected(self, _checked=None) -> None:
        from histoview.models.library import rename_in_library

        e = self.selected()
        if e is None or e.source != "user":
            self.status.setText(
                "Select one of your models (bundled demo weights cannot be renamed)."
            )
            return
        name = self._ask_text("Rename model", "New name:", e.name)
        if not name or name.strip() == e.name:
            return
        name = name.strip()
        if any(not (ch.isalnum() or ch in "-_.") for ch in name) or name.startswith("."):
            self.status.setText("Use letters, digits, '-', '_' and '.' only.")
            return
        try:
            dest = rename_in_library(e, name)
        except (OSError, PermissionError) as exc:
            self.status.setText(f"Cannot rename: {exc}")
            return
        self._changed(f"Renamed {e.name} to {dest.stem}.")
        self.select(dest.stem)

    def delete_selected(self, _checked=None) -> None:
        from histoview.models.library import delete_from_library

        e = self.selected()
        if e is None:
            return
        if e.source != "user":
            self.status.setText(f"{e.name}: bundled demo weights cannot be deleted.")
            return
        if not self._confirm("Delete model", f"Delete {e.name} from your model library?\n{e.path}"):
            self.status.setText("Nothing deleted.")
            return
        try:
            delete_from_library(e)
        except OSError as exc:
            self.status.setText(f"Cannot delete: {exc}")
            return
        self._changed(f"Deleted {e.name}.")

    def export_selected(self, _checked=None) -> Path | None:
        from histoview.models.checkpoint import sidecar_path

        e = self.selected()
        if e is None:
            return None
        folder = self._ask_folder(f"Export {e.name} to a folder")
        if not folder:
            return None
        dest = Path(folder) / f"{e.name}.safetensors"
        i = 1
        while dest.exists() or sidecar_path(dest).exists():  # never overwrite
            dest = Path(folder) / f"{e.name}-{i}.safetensors"
            i += 1
        try:
            shutil.copy2(sidecar_path(e.path), sidecar_path(dest))
            shutil.copy2(e.path, dest)
        except OSError as exc:
            self.status.setText(f"Cannot export: {exc}")
            return None
        self.status.setText(f"Exported {e.name} to {dest} (and {sidecar_path(dest).name}).")
        return dest
