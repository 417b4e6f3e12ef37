"""The training dock's Run tab (:mod:`histoview.viewer._train_widget`): how a run is going.

:class:`RunView` shows the warnings, metrics, live training curves (:class:`LiveCurves`)
and confusion matrix of a run; its ``header`` (progress bar, elapsed / remaining time,
status line) is a separate widget the dock keeps above its tabs.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from histoview.viewer._train_widget_parts import (
    _canvas_class,
    _wrapped_label,
    figure_canvas,
    fmt_duration,
    metrics_text,
    missing_classes,
)


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
        missing = missing_classes(val)
        self.status.setText(
            f"Epoch {ev['epoch']}/{ev['epochs']}: train loss {ev['train_loss']:.4f}"
            + (f", validation balanced accuracy {bacc:.3f}" if bacc is not None else "")
            + (f" (no {', '.join(missing)} in validation)" if missing else "")
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
