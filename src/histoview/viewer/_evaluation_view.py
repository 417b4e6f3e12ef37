"""The training dock's evaluation panel: the figures and table ``histoview evaluate`` writes.

:func:`evaluation_job` runs :func:`histoview.training.evaluate.iter_evaluate_checkpoint`
(which writes metrics.json/.csv, predictions.csv and the three PNGs, numbering files
rather than overwriting them) and then builds the same figures from the labels and
probabilities it returns: the confusion matrix (counts and row-normalised, the panels
stacked for the narrow dock), ROC and precision-recall curves.
:class:`EvaluationView` runs that job in a napari worker, shows its progress, draws the
figures in Qt canvases at their own size (a scroll area shows the rest) and lists the
per-class metrics in a table; classes with under
:data:`~histoview.training.datasets.MIN_IMAGES_PER_CLASS` images get a warning.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from histoview.training.evaluation_outputs import PER_CLASS_COLUMNS
from histoview.viewer._compat import SignalQueue

#: figure key -> tab title (the keys match the files evaluate writes: ``<key>.png``)
FIGURES = (("confusion_matrix", "Confusion matrix"), ("roc", "ROC"), ("pr", "Precision-recall"))
TABLE_COLUMNS = PER_CLASS_COLUMNS


def choose_split(checkpoint, data) -> tuple[str, str | None]:
    """``("test", None)`` when the checkpoint's own test split can be rebuilt on ``data``,
    else ``("all", why)`` (data it was not trained on). Class mismatches raise ValueError."""
    from histoview.models.checkpoint import read_metadata
    from histoview.models.library import find_checkpoint
    from histoview.training.evaluate import dataset_for_checkpoint, training_test_split

    meta = read_metadata(find_checkpoint(checkpoint))
    dataset = dataset_for_checkpoint(data, meta)
    try:
        training_test_split(dataset, meta)
    except ValueError as exc:
        return "all", str(exc)
    return "test", None


def evaluation_job(
    checkpoint,
    data,
    *,
    out_dir,
    split: str | None = None,
    device: str | None = None,
    should_stop=None,
):
    """Generator of evaluate's events; returns its result plus ``figures`` (drawn off the UI).

    ``split=None`` picks ``"test"`` when the checkpoint's test split can be rebuilt on
    ``data`` and ``"all"`` otherwise (the checkpoint was trained elsewhere).
    """
    from histoview.training.evaluate import iter_evaluate_checkpoint
    from histoview.training.evaluation_outputs import evaluation_figures

    if split is None:
        split, why = choose_split(checkpoint, data)
        if why:
            yield {"event": "message", "text": f"evaluating every image of the dataset ({why})"}
    result = yield from iter_evaluate_checkpoint(
        checkpoint, data, out_dir=out_dir, split=split, device=device, should_stop=should_stop
    )
    if result.get("cancelled"):
        return result
    from histoview.training.figures import confusion_matrix_figure

    y, probs = result["y_true"], result["probabilities"]
    figures = evaluation_figures(result, y, probs)
    # the same matrix as confusion_matrix.png, its two panels one above the other
    title = figures["confusion_matrix"].get_suptitle() or None
    figures["confusion_matrix"] = confusion_matrix_figure(
        result["confusion_matrix"], result["classes"], title=title, stacked=True
    )
    return {**result, "out_dir": str(out_dir), "figures": figures}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


class EvaluationView(QWidget):
    """Progress, status, per-class metric table and the evaluation figures of one checkpoint.

    ``on_error`` (optional) also receives each error message, e.g. for the dock's status line.
    """

    def __init__(self, parent=None, on_error=None):
        super().__init__(parent)
        self.worker = None
        self.last_result: dict | None = None
        self.figures: dict[str, Any] = {}
        self.canvases: dict[str, Any] = {}
        self.on_error = on_error
        self._stop = threading.Event()
        self._pbar = None
        self._signals = SignalQueue(lambda message: self.report_error(message))
        self.status = QLabel(
            "Evaluations appear here: after a training run (its test split), or "
            "from the model library's 'Evaluate on dataset...'."
        )
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel evaluation")
        self.cancel_button.setEnabled(False)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(110)
        self.figure_tabs = QTabWidget()
        self.figure_tabs.setMinimumHeight(380)
        row = QHBoxLayout()
        row.addWidget(self.progress)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addLayout(row)
        for w in (self.summary, self.table, self.figure_tabs):
            layout.addWidget(w)
        self.cancel_button.clicked.connect(self.cancel)
        self.destroyed.connect(self._stop.set)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def evaluate(
        self,
        checkpoint,
        data,
        out_dir,
        *,
        split: str | None = None,
        device: str | None = None,
        what: str = "",
    ) -> bool:
        """Start evaluating ``checkpoint`` on ``data`` in a worker; False when one is running."""
        from napari.qt.threading import create_worker

        from histoview.viewer._compat import avoid_triton_llvm_clash

        if self.worker is not None:
            self.status.setText("An evaluation is running: wait for it or cancel it first.")
            return False
        avoid_triton_llvm_clash()
        self._stop.clear()
        self.clear()
        self.progress.setRange(0, 0)  # busy until the worker reports its size
        self.status.setText(
            f"Evaluating {what or Path(str(checkpoint)).name}: loading the model "
            "and reading the data..."
        )
        worker = create_worker(
            evaluation_job,
            checkpoint,
            data,
            out_dir=out_dir,
            split=split,
            device=device,
            should_stop=self._stop.is_set,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.yielded.connect(lambda ev: self._post(self._on_event, ev))
        worker.returned.connect(lambda result: self._post(self._on_returned, result))
        worker.errored.connect(
            lambda exc: self._post(self.report_error, f"evaluation failed: {exc}")
        )
        worker.finished.connect(lambda: self._post(self._on_finished))
        self.worker = worker
        self.cancel_button.setEnabled(True)
        worker.start()
        return True

    def cancel(self, _checked=None) -> None:
        if self.worker is not None:
            self._stop.set()
            self.status.setText("Cancelling the evaluation...")

    def clear(self) -> None:
        self.last_result = None
        self.summary.setText("")
        self.table.setRowCount(0)
        self.figures = {}
        self.canvases = {}
        while self.figure_tabs.count():
            page = self.figure_tabs.widget(0)
            self.figure_tabs.removeTab(0)
            page.deleteLater()

    def report_error(self, message: str) -> None:
        self.status.setText(f"Error: {message}")
        if self.on_error is not None:
            self.on_error(message)

    # -- worker signals, handled one at a time and in order (see TrainWidget._post) ----------------
    def _post(self, handler, *args) -> None:
        self._signals.post(handler, *args)

    def _on_event(self, ev: dict) -> None:
        from napari.utils import progress

        if ev.get("event") == "start":
            self.progress.setRange(0, int(ev["steps"]))
            self.progress.setValue(0)
            self._close_pbar()
            self._pbar = progress(total=int(ev["steps"]), desc="histoview: evaluating")
        elif ev.get("event") == "step":
            if self._pbar is not None:
                self._pbar.update(max(int(ev["step"]) - self.progress.value(), 0))
            self.progress.setValue(int(ev["step"]))
        if ev.get("text"):
            self.status.setText(ev["text"][:1].upper() + ev["text"][1:])

    def _on_returned(self, result: dict) -> None:
        if result.get("cancelled"):
            self.status.setText("Evaluation cancelled; nothing written.")
            return
        self.show_result(result)

    def _on_finished(self) -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._close_pbar()

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    # -- results ----------------------------------------------------------------------------------
    def show_result(self, result: dict) -> None:
        """The per-class table, overall metrics, warnings and the three figures."""
        from histoview.training.datasets import MIN_IMAGES_PER_CLASS
        from histoview.viewer._train_widget_parts import figure_canvas

        self.clear()
        self.last_result = result
        overall = result.get("overall") or {}
        data = result.get("data") or {}
        which = "test split" if result.get("split") == "test" else "every image of the dataset"
        few = [
            f"{name}: {pc.get('support')}"
            for name, pc in (result.get("per_class") or {}).items()
            if isinstance(pc.get("support"), int) and pc["support"] < MIN_IMAGES_PER_CLASS
        ]
        if few:
            few = [
                f"under {MIN_IMAGES_PER_CLASS} images of a class ({', '.join(few)}): "
                "its metrics mean little"
            ]
        lines = [
            f"{result['model']} on {data.get('evaluated', overall.get('n'))} images "
            f"({which}, {data.get('layout', '?')}): "
            + ", ".join(
                f"{k.replace('_', ' ')} {_cell(overall.get(k))}"
                for k in ("accuracy", "balanced_accuracy", "roc_auc", "f1")
            ),
            *(f"Warning: {w}" for w in [*(result.get("warnings") or []), *few]),
            result.get("notice", ""),
        ]
        files = result.get("files") or {}
        if files.get("metrics_json"):
            lines.append(f"Files: {Path(files['metrics_json']).parent}")
        self.summary.setText("\n".join(line for line in lines if line))
        rows = [(name, pc) for name, pc in (result.get("per_class") or {}).items()]
        rows.append(("overall (macro)", {**overall, "support": overall.get("n")}))
        self.table.setRowCount(len(rows))
        for r, (name, values) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(str(name)))
            for c, key in enumerate(TABLE_COLUMNS[1:], start=1):
                self.table.setItem(r, c, QTableWidgetItem(_cell(values.get(key))))
        self.table.resizeColumnsToContents()
        self.figures = dict(result.get("figures") or {})
        for key, label in FIGURES:
            if self.figures.get(key) is None:
                continue
            canvas = figure_canvas(self.figures[key])
            self.canvases[key] = canvas
            self.figure_tabs.addTab(canvas, label)
        self.status.setText(
            f"Evaluated {Path(result['checkpoint']).name} on the {which}; "
            f"files written to {result.get('out_dir', '?')}."
        )


class EvaluationActions:
    """The training dock's evaluation actions (mixed into ``TrainWidget``, which provides
    ``evaluation``, ``library``, ``status``, ``tabs`` and the dataset / output choices)."""

    def _add_evaluation_tab(self) -> None:
        from qtpy.QtWidgets import QScrollArea

        self.evaluation = EvaluationView(on_error=lambda msg: self.status.setText(f"Error: {msg}"))
        self._eval_page = page = QScrollArea()
        page.setWidgetResizable(True)
        page.setWidget(self.evaluation)
        self.tabs.addTab(page, "Evaluation")
        self.library.evaluate_requested.connect(self.evaluate_entry)

    def _evaluate_run(self, checkpoint) -> None:
        """The finished run's best model on its own test split; files in ``<run>/evaluation``."""
        config = self._config
        out = Path(config["output_dir"]) / "evaluation"
        if self.evaluation.evaluate(
            checkpoint,
            dict(config["data"]),
            out,
            split="test",
            device=config["train"].get("device"),
            what=config["model"],
        ):
            self.status.setText(
                self.status.text() + " Evaluating it on the test split: see the Evaluation tab."
            )

    def evaluate_entry(self, entry=None) -> None:
        """Evaluate a library model on the dataset chosen in the Train tab (its test split when
        that is its training data, else every image); files under the output folder."""
        from histoview.viewer._train_widget_parts import default_run_dir

        entry = entry if entry is not None else self.library.selected()
        if entry is None:
            return self.library.status.setText("Select a model to evaluate.")
        if self._dataset is None:
            return self.library.status.setText(
                "Choose a dataset folder in the Train tab first: the model is evaluated on it."
            )
        data = self._data_spec() if self.phantom else self._data_spec()["root"]
        base = Path(self.output_edit.text().strip() or default_run_dir(entry.name)).expanduser()
        out = base / f"evaluation-{entry.name}"
        if self.evaluation.evaluate(
            entry.path,
            data,
            out,
            device=self.device_choice.currentText(),
            what=f"{entry.name} on {'phantoms' if self.phantom else Path(data).name}",
        ):
            self.library.status.setText(f"Evaluating {entry.name}: see the Evaluation tab.")
            self.tabs.setCurrentWidget(self._eval_page)
