"""The training dock widget: train a model on a dataset folder from napari, off the UI thread.

Choose a folder (BreakHis, BACH, one folder per class) or synthetic phantoms, a model, its
settings and its stain normalisation and augmentation in the Settings tab (:mod:`histoview.viewer._train_settings`: what the data
holds and how it splits, checked before anything runs, and the recipe's starting values).
Training runs :func:`histoview.training.run.iter_train_from_config` in a napari generator
worker.

The buttons, the progress bar and the status line sit above the tabs, so they stay in view
when the dock shares the side with other docks; the tabs are Settings, Run (live curves,
metrics, warnings, the confusion matrix: :mod:`histoview.viewer._train_run_view`), Model
library (:mod:`histoview.viewer._train_library`) and Evaluation, each scrolling on
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

from qtpy.QtWidgets import QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from histoview.viewer._compat import SignalQueue, avoid_triton_llvm_clash
from histoview.viewer._evaluation_view import EvaluationActions
from histoview.viewer._train_library import LibraryPanel
from histoview.viewer._train_run_view import RunView
from histoview.viewer._train_settings import SYNTHETIC_WARNING, TrainSettings
from histoview.viewer._train_widget_parts import _row
from histoview.viewer._widgets import scrolling

if TYPE_CHECKING:
    import napari


class TrainWidget(EvaluationActions, TrainSettings, QWidget):
    """Dock widget: dataset, model and options, train / cancel / resume, live curves, results."""

    # napari passes the viewer to the __init__ parameter annotated as a Viewer.
    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        from histoview.viewer._widgets import share_side_evenly

        share_side_evenly(self)  # once docked: not squeezed by the docks beside it
        self.viewer = viewer
        self._worker = None
        self._stop = threading.Event()
        self._steps, self._resumed_epoch = 1, 0
        self._signals = SignalQueue(lambda message: self._report_error(message))
        self.events: list[dict] = []
        self.last_result: dict | None = None
        self.library_path: Path | None = None
        self._config: dict = {}

        settings = self._build_settings()
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.run_view = RunView()
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

        self._connect_settings()
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self.resume)
        self.destroyed.connect(self._stop.set)  # a closed dock stops its run
        self._apply_recipe()  # the model's values before a dataset is chosen
        self._dataset_changed()

    @property
    def status(self) -> QLabel:
        return self.run_view.status

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
        self.stain_options.setEnabled(not running)
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
        from histoview.viewer._cpu_share import torch_threads_per_step

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
            # every core, also when this pool thread last computed beside an explanation
            torch_threads_per_step(iter_train_from_config, leave_one=False),
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
