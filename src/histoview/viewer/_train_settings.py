"""The training dock's Settings tab: the dataset and the model and training options.

:class:`TrainSettings` is mixed into :class:`~histoview.viewer._train_widget.TrainWidget`
(as :class:`~histoview.viewer._evaluation_view.EvaluationActions` is); it builds the form
(:meth:`TrainSettings._build_settings`), says what the chosen folder holds and how it
splits before anything runs (data with images of fewer than two classes is refused, a
split with under :data:`~histoview.training.datasets.MIN_IMAGES_PER_CLASS` images of a class
is named in a warning: :func:`~histoview.training.datasets.check_trainable`,
:func:`~histoview.training.datasets.split_warnings`), fills the starting values from the
recipe for the model and the data's layout, task and magnification
(:func:`~histoview.training.recipes.recipe_for`), holds the stain options
(:class:`~histoview.viewer._train_stain.StainOptions`: normalisation and HED jitter) and
turns the choices into a training config (:meth:`TrainSettings.build_config`). The dock
provides ``_update_buttons``.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from histoview import RESEARCH_NOTICE
from histoview.training.recipes import recipe_for
from histoview.viewer._train_stain import StainOptions
from histoview.viewer._train_widget_parts import (
    _row,
    _wrapped_label,
    default_run_dir,
    devices,
    split_text,
    summary_text,
)

SOURCES = ("image folder", "synthetic phantoms")
MAGNIFICATIONS = ("all", "40", "100", "200", "400")
SYNTHETIC_WARNING = (
    "Synthetic data: this model learns generated phantom images, not patient "
    "tissue; its metrics say nothing about real slides."
)
ERROR_STYLE, WARNING_STYLE = "color: #e05050", "color: #d08000"


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


class TrainSettings:
    """The Settings tab of the training dock (a mixin of ``TrainWidget``, which provides
    ``_update_buttons``): dataset, model, task and options, and the config they describe."""

    def _build_settings(self) -> QWidget:
        """Create the form's widgets; returns the Settings page's content (not yet scrolling)."""
        from histoview.models.registry import list_models

        self._layout: str | None = None
        self._dataset = None
        self._recipe: dict = {}
        self.refusal: str | None = None  # why this dataset cannot be trained on
        self.split_warnings: list[str] = []
        self._auto = {"name": "", "output": ""}

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

        self.stain_options = StainOptions()

        self.notice = _wrapped_label(RESEARCH_NOTICE)
        self.synthetic_notice = _wrapped_label(SYNTHETIC_WARNING, WARNING_STYLE)
        settings = QWidget()
        col = QVBoxLayout(settings)
        boxes = (self._data_box, self._options_box, self.stain_options)
        for w in (self.notice, self.synthetic_notice, *boxes):
            col.addWidget(w)
        col.addStretch(1)
        return settings

    def _connect_settings(self) -> None:
        self.source_choice.currentIndexChanged.connect(self._dataset_changed)
        self.folder_edit.editingFinished.connect(self._dataset_changed)
        self.browse_button.clicked.connect(self._browse_dataset)
        self.phantom_count.valueChanged.connect(self._update_summary)
        for signal in (self.task_choice.currentIndexChanged, self.mag_choice.currentIndexChanged):
            signal.connect(self._data_options_changed)
        self.model_choice.currentIndexChanged.connect(self._apply_recipe)
        self.model_choice.currentIndexChanged.connect(self._model_kind_changed)
        self.output_edit.textChanged.connect(self._update_buttons)
        self.output_browse.clicked.connect(self._browse_output)
        self._model_kind_changed()

    def _model_kind_changed(self, *_):
        from histoview.models.registry import get_model_config

        self.stain_options.set_model_kind(get_model_config(self.model_choice.currentText()).kind)

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

        status = getattr(self, "status", None)  # the dock's line above the tabs
        if status is not None and status.text().startswith("Error:"):
            status.setText("")  # about the data before: the checks below speak for this one
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
        stain = self.stain_options.sections()  # {} by default: no stain, no jitter
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
            **stain,
            "train": train,
            "output_dir": str(Path(out).expanduser().resolve()),
        }
