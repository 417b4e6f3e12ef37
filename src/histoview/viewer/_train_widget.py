"""The training dock widget: train a model on a dataset folder from napari, off the UI thread.

Choose a folder (BreakHis, BACH, one folder per class) or synthetic phantoms; the
widget shows what it found and how it splits before anything runs: data with images of
fewer than two classes is refused, and a split with under
:data:`~histoview.training.datasets.MIN_IMAGES_PER_CLASS` images of a class is named in a
warning (the checks of ``histoview train``: :func:`~histoview.training.datasets.check_trainable`,
:func:`~histoview.training.datasets.split_warnings`). Starting values come from the recipe
for the model and the data's layout, task and magnification
(:func:`~histoview.training.recipes.recipe_for`). Training runs
:func:`histoview.training.run.iter_train_from_config` in a napari generator worker.

The buttons, the progress bar and the status line sit above the tabs, so they stay in view
when the dock shares the side with other docks; the tabs are Settings, Run (live curves,
metrics, warnings, the confusion matrix), Model library and Evaluation, each scrolling on
its own. Cancel stops after the current step keeping the last finished epoch, and Resume
continues from it. The finished model joins the user model library and every open
explanation widget lists it at once (:func:`histoview.viewer._explain_widget.refresh_all`).
The Evaluation tab shows what ``histoview evaluate`` writes for the finished model (test
split) or a library model (:mod:`histoview.viewer._evaluation_view`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from histoview import RESEARCH_NOTICE
from histoview.training.recipes import recipe_for
from histoview.viewer._compat import SignalQueue, avoid_triton_llvm_clash
from histoview.viewer._evaluation_view import EvaluationActions
from histoview.viewer._train_library import LibraryPanel
from histoview.viewer._train_run_view import RunView
from histoview.viewer._train_widget_parts import (
    _wrapped_label,
    default_run_dir,
    devices,
    scrolling,
    split_text,
    summary_text,
)

if TYPE_CHECKING:
    import napari

SOURCES = ("image folder", "synthetic phantoms")
MAGNIFICATIONS = ("all", "40", "100", "200", "400")
SYNTHETIC_WARNING = (
    "Synthetic data: this model learns generated phantom images, not patient "
    "tissue; its metrics say nothing about real slides."
)
ERROR_STYLE, WARNING_STYLE = "color: #e05050", "color: #d08000"


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


def _spin(low: int, high: int, value: int | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(low if value is None else value)
    return box


def _group(title: str, rows: list) -> QGroupBox:
    """A titled form; each row is (label, widget or layout) or a full-width widget."""
    form = QFormLayout()
    for row in rows:
        form.addRow(*row) if isinstance(row, tuple) else form.addRow(row)
    box = QGroupBox(title)
    box.setLayout(form)
    return box


class TrainWidget(EvaluationActions, QWidget):
    """Dock widget: dataset, model and options, train / cancel / resume, live curves, results."""

    # napari passes the viewer to the __init__ parameter annotated as a Viewer.
    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        from histoview.models.registry import list_models

        super().__init__(parent)
        self.viewer = viewer
        self._worker = None
        self._stop = threading.Event()
        self._layout: str | None = None
        self._dataset = None
        self._recipe: dict = {}
        self.refusal: str | None = None  # why this dataset cannot be trained on
        self.split_warnings: list[str] = []
        self._auto = {"name": "", "output": ""}
        self._steps, self._resumed_epoch = 1, 0
        self._signals = SignalQueue(lambda message: self._report_error(message))
        self.events: list[dict] = []
        self.last_result: dict | None = None
        self.library_path: Path | None = None
        self._config: dict = {}

        self.source_choice = QComboBox()
        self.source_choice.addItems(SOURCES)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("BreakHis, BACH, or one sub-folder per class")
        self.browse_button = QPushButton("Browse...")
        self.phantom_count = _spin(4, 500, 20)
        self.summary = _wrapped_label("Choose a dataset folder.")
        self.checks = _wrapped_label("")  # the split, and why it cannot train or may mislead
        self._folder_label, self._count_label = QLabel("folder"), QLabel("phantoms per class")
        self._data_box = _group(
            "Dataset",
            [
                ("source", self.source_choice),
                (self._folder_label, _row(self.folder_edit, self.browse_button)),
                (self._count_label, self.phantom_count),
                self.summary,
                self.checks,
            ],
        )

        self.model_choice = QComboBox()
        self.model_choice.addItems(list_models())
        self.model_choice.setCurrentText("amil")
        self.task_choice = QComboBox()
        self.mag_choice = QComboBox()
        self.mag_choice.addItems(MAGNIFICATIONS)
        self._mag_label = QLabel("magnification")
        self.epochs = _spin(1, 1000)
        self.batch_size = _spin(1, 1024)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.device_choice = QComboBox()
        self.device_choice.addItems(devices())
        self.output_edit = QLineEdit()
        self.output_browse = QPushButton("Browse...")
        self.name_edit = QLineEdit()
        self.recipe_label = _wrapped_label("")
        self._options_box = _group(
            "Model and training",
            [
                ("model", self.model_choice),
                ("task", self.task_choice),
                (self._mag_label, self.mag_choice),
                ("epochs", self.epochs),
                ("batch size", self.batch_size),
                ("learning rate", self.lr),
                ("device", self.device_choice),
                ("output folder", _row(self.output_edit, self.output_browse)),
                ("library name", self.name_edit),
                self.recipe_label,
            ],
        )

        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.run_view = RunView()
        self.notice = _wrapped_label(RESEARCH_NOTICE)
        self.synthetic_notice = _wrapped_label(SYNTHETIC_WARNING, WARNING_STYLE)
        settings = QWidget()
        col = QVBoxLayout(settings)
        for w in (self.notice, self.synthetic_notice, self._data_box, self._options_box):
            col.addWidget(w)
        col.addStretch(1)
        self.library = LibraryPanel()
        self.tabs = QTabWidget()
        self._settings_page = scrolling(settings)
        self._run_page = scrolling(self.run_view)
        self.tabs.addTab(self._settings_page, "Settings")
        self.tabs.addTab(self._run_page, "Run")
        self.tabs.addTab(self.library, "Model library")
        self._add_evaluation_tab()
        self.tabs.currentChanged.connect(
            lambda i: self.tabs.widget(i) is self.library and self.library.refresh()
        )
        # always in view, above the tabs: what to press and how the run is going
        layout = QVBoxLayout(self)
        layout.addLayout(_row(self.train_button, self.cancel_button, self.resume_button))
        layout.addWidget(self.run_view.header)
        layout.addWidget(self.tabs, 1)

        self.source_choice.currentIndexChanged.connect(self._dataset_changed)
        self.folder_edit.editingFinished.connect(self._dataset_changed)
        self.browse_button.clicked.connect(self._browse_dataset)
        self.phantom_count.valueChanged.connect(self._update_summary)
        for signal in (self.task_choice.currentIndexChanged, self.mag_choice.currentIndexChanged):
            signal.connect(self._data_options_changed)
        self.model_choice.currentIndexChanged.connect(self._apply_recipe)
        self.output_edit.textChanged.connect(self._update_buttons)
        self.output_browse.clicked.connect(self._browse_output)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self.resume)
        self.destroyed.connect(self._stop.set)  # a closed dock stops its run
        self._apply_recipe()  # the model's values before a dataset is chosen
        self._dataset_changed()

    @property
    def status(self) -> QLabel:
        return self.run_view.status

    # -- dataset ----------------------------------------------------------------------------------
    @property
    def phantom(self) -> bool:
        return self.source_choice.currentText() == SOURCES[1]

    def set_dataset_folder(self, folder) -> None:
        self.source_choice.setCurrentText(SOURCES[0])
        self.folder_edit.setText(str(folder))
        self._dataset_changed()

    def _browse_dataset(self, _checked=None):
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text())
        if folder:
            self.set_dataset_folder(folder)

    def _browse_output(self, _checked=None):
        folder = QFileDialog.getExistingDirectory(self, "Output folder for the run")
        if folder:
            self.output_edit.setText(folder)

    def _dataset_changed(self, *_):
        from histoview.training.datasets import detect_layout

        phantom = self.phantom
        for w in (self._folder_label, self.folder_edit, self.browse_button):
            w.setVisible(not phantom)
        self._count_label.setVisible(phantom)
        self.phantom_count.setVisible(phantom)
        layout = "phantom"
        if not phantom:
            root = self.folder_edit.text().strip()
            if not root:
                return self._dataset_error("Choose a dataset folder.")
            try:
                layout = detect_layout(Path(root).expanduser())
            except (OSError, ValueError) as exc:
                return self._dataset_error(str(exc))
        if layout != self._layout:
            from histoview.training.datasets import TASKS

            self._layout = layout
            self.task_choice.blockSignals(True)
            self.task_choice.clear()
            self.task_choice.addItems(TASKS[layout])
            self.task_choice.blockSignals(False)
            self._mag_label.setVisible(layout == "breakhis")
            self.mag_choice.setVisible(layout == "breakhis")
            self._apply_recipe(update=False)
        self._update_summary()

    def _data_options_changed(self, *_):
        """A new task or magnification: its own recipe if it has one, then the new data."""
        self._apply_recipe(keep_same=True, update=False)
        self._update_summary()

    def _data_spec(self) -> dict:
        if self.phantom:
            return {
                "type": "phantom",
                "task": self.task_choice.currentText(),
                "n_per_class": self.phantom_count.value(),
                "preset": "breakhis",
                "seed": 0,
            }
        spec = {
            "type": self._layout,
            "root": str(Path(self.folder_edit.text().strip()).expanduser()),
            "task": self.task_choice.currentText(),
        }
        if self._layout == "breakhis":
            spec["magnification"] = self.mag_choice.currentText()
        return spec

    def _update_summary(self, *_):
        from histoview.training.datasets import discover_dataset

        if self._layout is None:
            return
        try:
            self._dataset = discover_dataset(self._data_spec())
        except (OSError, ValueError, KeyError) as exc:
            return self._dataset_error(str(exc))
        self.summary.setStyleSheet("")
        self.summary.setText(summary_text(self._dataset.summary()))
        self.synthetic_notice.setVisible(self.phantom)
        self._update_checks()

    def _update_checks(self) -> None:
        """Refuse one-class data; show the split the run will use and warn where it is small."""
        from histoview.training.datasets import check_trainable, split_dataset, split_warnings

        self.refusal, self.split_warnings = None, []
        if self._dataset is None:
            return self._update_buttons()
        try:
            check_trainable(self._dataset)
        except ValueError as exc:
            self.refusal = f"Cannot train on this data: {exc}."
            self.checks.setStyleSheet(ERROR_STYLE)
            self.checks.setText(self.refusal)
            return self._update_auto_fields()
        settings, parts = split_dataset(self._dataset, self._recipe.get("split"))
        self.split_warnings = split_warnings(self._dataset.classes, parts)
        lines = [split_text(settings, parts, self._dataset.has_patients)]
        lines += [f"Warning: {w}." for w in self.split_warnings]
        self.checks.setStyleSheet(WARNING_STYLE if self.split_warnings else "")
        self.checks.setText("\n".join(lines))
        self._update_auto_fields()

    def _dataset_error(self, message: str) -> None:
        self._dataset, self._layout = None, None
        self.refusal, self.split_warnings = message, []
        self.summary.setStyleSheet(ERROR_STYLE)
        self.summary.setText(message)
        self.checks.setText("")
        self.synthetic_notice.setVisible(self.phantom)
        self._update_buttons()

    # -- options ----------------------------------------------------------------------------------
    def _apply_recipe(self, *_, keep_same: bool = False, update: bool = True):
        """Starting values from the recipe for the model and the data (layout, task, mag).

        ``keep_same`` leaves the user's values alone when the recipe stays the same;
        ``update`` re-checks the split (the recipe's own ``split`` settings).
        """
        model = self.model_choice.currentText()
        breakhis = self._layout == "breakhis"
        r = recipe_for(
            model,
            self._layout,
            task=self.task_choice.currentText() or None,
            magnification=self.mag_choice.currentText() if breakhis else None,
        )
        if keep_same and r["source"] == self._recipe.get("source"):
            return
        self._recipe = r
        train = r["train"]  # holds SHOWN_OPTIONS (TrainOptions' defaults where a recipe omits one)
        self.epochs.setValue(int(train["epochs"]))
        self.batch_size.setValue(int(train["batch_size"]))
        self.lr.setValue(float(train["lr"]))
        extra = {
            k: v for k, v in train.items() if k not in ("epochs", "batch_size", "lr", "device")
        }
        extra.update({f"model {k}": v for k, v in r["model_kwargs"].items()})
        text = f"Starting values: {r['source']}."
        if extra:
            text += " Also used: " + ", ".join(f"{k} {v}" for k, v in extra.items()) + "."
        self.recipe_label.setText(text)
        if update:
            self._update_checks()

    def _update_auto_fields(self) -> None:
        """Default library name and output folder, unless the user typed their own."""
        if self._dataset is None:
            return self._update_buttons()
        tag = f"phantom-{self._dataset.task}" if self.phantom else Path(self._dataset.root).name
        name = f"{self.model_choice.currentText()}-{tag}"
        if self.name_edit.text() in ("", self._auto["name"]):
            self.name_edit.setText(name)
            self._auto["name"] = name
        if self.output_edit.text() in ("", self._auto["output"]):
            self._auto["output"] = str(default_run_dir(name))
            self.output_edit.setText(self._auto["output"])
        self._update_buttons()

    def build_config(self) -> dict:
        """The training config the current choices describe (see histoview.training.config)."""
        if self._dataset is None:
            raise ValueError("choose a dataset first")
        if self.refusal:
            raise ValueError(self.refusal)
        out = self.output_edit.text().strip()
        if not out:
            raise ValueError("choose an output folder")
        r = self._recipe
        train = {
            **r["train"],
            "epochs": self.epochs.value(),
            "batch_size": self.batch_size.value(),
            "lr": self.lr.value(),
            "device": self.device_choice.currentText(),
        }
        return {
            "name": self.name_edit.text().strip() or self._auto["name"],
            "model": self.model_choice.currentText(),
            "model_kwargs": dict(r["model_kwargs"]),
            "data": self._data_spec(),
            "split": dict(r["split"]),
            "input": dict(r["input"]),
            "train": train,
            "output_dir": str(Path(out).expanduser().resolve()),
        }

    def _resumable(self) -> bool:
        out = Path(self.output_edit.text().strip() or ".").expanduser()
        return (out / "train_state.safetensors").exists() and (out / "last.safetensors").exists()

    def _update_buttons(self, *_):
        running = self._worker is not None
        ready = self._dataset is not None and not self.refusal
        self.train_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(ready and not running and self._resumable())
        self._options_box.setEnabled(not running)
        self._data_box.setEnabled(not running)

    # -- running ----------------------------------------------------------------------------------
    def train(self, _checked=None, *, resume: bool = False) -> None:
        """Start training (a fresh run, or continue the output folder's run with ``resume``)."""
        if self._worker is not None:
            return
        try:
            config = self.build_config()
        except (OSError, ValueError) as exc:
            return self._report_error(str(exc))
        out = Path(config["output_dir"])
        if not resume and (out / "last.safetensors").exists():
            base, i = out, 2
            while out.exists():  # never overwrite an earlier run
                out, i = base.with_name(f"{base.name}-{i}"), i + 1
            config["output_dir"] = str(out)
            self._auto["output"] = str(out)
            self.output_edit.setText(str(out))
        self._start(config, resume)

    def resume(self, _checked=None) -> None:
        self.train(resume=True)

    def cancel(self, _checked=None) -> None:
        if self._worker is not None:
            self._stop.set()
            self.status.setText("Cancelling: stopping after the current step...")

    def _should_stop(self) -> bool:
        return self._stop.is_set()

    def _start(self, config: dict, resume: bool) -> None:
        from napari.qt.threading import create_worker

        from histoview.training.run import iter_train_from_config

        avoid_triton_llvm_clash()
        self._stop.clear()
        self._steps, self._resumed_epoch = 1, 0
        self._config = config
        state = Path(config["output_dir"]) / "train_state.json"
        history = (
            json.loads(state.read_text()).get("history", []) if resume and state.exists() else []
        )
        self.run_view.begin(
            ("Resuming" if resume else "Starting") + f" {config['model']}: "
            "reading the data and building the model...",
            history,
        )
        self.tabs.setCurrentWidget(self._run_page)  # the curves, not the settings, while it runs
        worker = create_worker(
            iter_train_from_config,
            config,
            resume=resume,
            should_stop=self._should_stop,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.yielded.connect(lambda ev: self._post(self._on_event, ev))
        worker.returned.connect(lambda result: self._post(self._on_returned, result))
        worker.errored.connect(
            lambda exc: self._post(self._report_error, f"training failed: {exc}")
        )
        worker.finished.connect(lambda: self._post(self._on_finished))
        self._worker = worker
        self._update_buttons()
        worker.start()

    def _post(self, handler, *args) -> None:
        self._signals.post(handler, *args)

    def _on_event(self, ev: dict) -> None:
        self.events.append(ev)
        kind = ev.get("event")
        if kind == "resumed":
            self._resumed_epoch = int(ev.get("epoch", 0))
        elif kind == "start":
            self._steps = int(ev["steps"])
            total = int(ev["epochs"]) * self._steps
            self.run_view.start(
                total,
                min(self._resumed_epoch * self._steps, total),
                f"histoview: training {self.model_choice.currentText()}",
            )
        elif kind == "step":
            return self.run_view.step(ev, self._steps)
        elif kind == "epoch_end":
            return self.run_view.epoch_end(ev)
        elif ev.get("warning"):
            self.run_view.add_warning(ev["warning"])
        if ev.get("text"):
            self.status.setText(ev["text"][:1].upper() + ev["text"][1:])

    def _on_returned(self, result: dict) -> None:
        self.last_result = result
        if result.get("cancelled"):
            from histoview.models.checkpoint import read_metadata

            last = Path(result["last"])
            if last.exists():
                epoch = read_metadata(last).get("epoch")
                self.status.setText(
                    f"Cancelled. The model after epoch {epoch} of "
                    f"{self.epochs.value()} is kept in {last}; press Resume to "
                    "continue from it."
                )
            else:
                self.status.setText(
                    "Cancelled before the first epoch finished: nothing was "
                    "kept. Press Train to start again."
                )
            return
        report = json.loads(Path(result["report"]).read_text()) if result.get("report") else {}
        self.run_view.show_report(report, SYNTHETIC_WARNING)
        self._add_to_library(result["checkpoint"])
        if report.get("test"):
            self._evaluate_run(result["checkpoint"])

    def _add_to_library(self, checkpoint) -> None:
        from histoview.models.library import add_to_library
        from histoview.viewer._explain_widget import refresh_all

        name = self.name_edit.text().strip() or self._auto["name"] or "model"
        try:
            self.library_path = add_to_library(checkpoint, name)
        except (OSError, ValueError) as exc:
            return self._report_error(f"could not add the model to the library: {exc}")
        refresh_all()
        self.library.refresh()
        self.library.select(self.library_path.stem)
        warned = len(self.run_view.warnings)
        caveat = (
            f" {warned} warning{'s' if warned > 1 else ''} about the split: see the Run tab."
            if warned
            else ""
        )
        self.status.setText(
            f"Finished. Added to your model library as "
            f"'{self.library_path.stem}'; the explanation widgets list it "
            f"now.{caveat}"
        )

    def _on_finished(self) -> None:
        self._worker = None
        self.run_view.close_pbar()
        self._update_buttons()

    def _report_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"Error: {message}")
        show_error(f"histoview: {message}")


#: the manifest's widget factory: ``train_widget(viewer)`` builds the dock (a class, so napari
#: finds the annotated viewer parameter and passes the viewer in).
train_widget = TrainWidget
