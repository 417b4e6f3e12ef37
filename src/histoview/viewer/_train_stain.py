"""The training dock's stain options: stain normalisation and HED stain jitter.

:class:`StainOptions` is a group in the Settings tab (:mod:`histoview.viewer._train_settings`)
that writes a training config's ``stain`` and ``augment`` sections
(:class:`~histoview.training.schema.StainSection`, :class:`~histoview.training.schema.
AugmentSection`):

* **normalisation**: none, Macenko or Reinhard (:mod:`histoview.preprocessing.stain`), fitted
  when training starts to the training split (never validation or test images) or to a
  reference image file; the fitted normaliser is stored in the checkpoint's sidecar and every
  explanation applies it (:func:`histoview.training.stain_fit.fit_stain_normaliser`);
* **HED jitter**: stain augmentation in training only (Tellez et al. 2019), bag and image
  models (nuclei-graph models detect nuclei on the image as it is: off for them).

The defaults (no normalisation, no jitter) add nothing to the config: the run is the one the
dock built before these options existed.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
)

from histoview.training.schema import TRAINING_SET
from histoview.viewer._train_widget_parts import _row, _wrapped_label

#: the choices shown, and the config's ``stain.method`` for each (None: no ``stain`` section)
METHODS = {"none": None, "Macenko": "macenko", "Reinhard": "reinhard"}
REFERENCES = ("fit on the training split", "an image file")
#: HED jitter sigma offered first (Tellez et al. 2019's "HED-light")
DEFAULT_JITTER = 0.05
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.PNG *.JPG *.JPEG *.TIF *.TIFF)"


class StainOptions(QGroupBox):
    """Stain normalisation (method, reference) and HED jitter (on/off, strength)."""

    def __init__(self, parent=None):
        super().__init__("Stain", parent)
        self.method_choice = QComboBox()
        self.method_choice.addItems(list(METHODS))
        self.method_choice.setToolTip(
            "Map every image's stain colours onto a reference's before the model sees it "
            "(Macenko et al. 2009; Reinhard et al. 2001). The fitted normaliser is stored in "
            "the checkpoint and applied again at inference."
        )
        self.reference_choice = QComboBox()
        self.reference_choice.addItems(REFERENCES)
        self.reference_edit = QLineEdit()
        self.reference_edit.setPlaceholderText("a reference H&E image")
        self.reference_browse = QPushButton("Browse...")
        self.keep_blank = QCheckBox("use images without tissue as they are")
        self.keep_blank.setChecked(True)
        self.keep_blank.setToolTip(
            "An image with too little tissue to estimate its stain (background, glass) is "
            "used unchanged; unticked, such an image stops the run with an error."
        )
        self.jitter_check = QCheckBox("HED stain jitter while training")
        self.jitter_check.setToolTip(
            "Perturb each training image's haematoxylin, eosin and DAB amounts "
            "(Tellez et al. 2019); never applied at inference."
        )
        self.jitter_strength = QDoubleSpinBox()
        self.jitter_strength.setDecimals(2)
        self.jitter_strength.setRange(0.01, 0.5)
        self.jitter_strength.setSingleStep(0.01)
        self.jitter_strength.setValue(DEFAULT_JITTER)
        self.jitter_strength.setToolTip("sigma: a ~ U(1 - sigma, 1 + sigma), b ~ U(-sigma, sigma)")
        self.note = _wrapped_label("")
        self._reference_label = QLabel("reference")
        self._file_label = QLabel("image file")
        self._graph = False

        form = QFormLayout()
        form.addRow("normalisation", self.method_choice)
        form.addRow(self._reference_label, self.reference_choice)
        form.addRow(self._file_label, _row(self.reference_edit, self.reference_browse))
        form.addRow(self.keep_blank)
        form.addRow(self.jitter_check)
        form.addRow("jitter strength", self.jitter_strength)
        form.addRow(self.note)
        self.setLayout(form)

        self.method_choice.currentIndexChanged.connect(self._update)
        self.reference_choice.currentIndexChanged.connect(self._update)
        self.jitter_check.toggled.connect(self._update)
        self.reference_browse.clicked.connect(self._browse_reference)
        self._update()

    # -- state ------------------------------------------------------------------------------
    @property
    def method(self) -> str | None:
        """The config's ``stain.method`` (``macenko``, ``reinhard``) or None (none chosen)."""
        return METHODS[self.method_choice.currentText()]

    @property
    def from_file(self) -> bool:
        return self.reference_choice.currentText() == REFERENCES[1]

    def set_model_kind(self, kind: str) -> None:
        """Nuclei-graph models get no HED jitter (the core refuses it for graphs)."""
        self._graph = kind == "graph"
        if self._graph:
            self.jitter_check.setChecked(False)
        self._update()

    def set_reference_file(self, path) -> None:
        self.reference_choice.setCurrentText(REFERENCES[1])
        self.reference_edit.setText(str(path))

    def _browse_reference(self, _checked=None) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Stain reference image", self.reference_edit.text(), IMAGE_FILTER
        )
        if path:
            self.set_reference_file(path)

    def _update(self, *_) -> None:
        on = self.method is not None
        for w in (self._reference_label, self.reference_choice, self.keep_blank):
            w.setVisible(on)
        for w in (self._file_label, self.reference_edit, self.reference_browse):
            w.setVisible(on and self.from_file)
        self.jitter_check.setEnabled(not self._graph)
        self.jitter_strength.setEnabled(self.jitter_check.isChecked() and not self._graph)
        lines = []
        if on:
            where = "the reference image" if self.from_file else "images of the training split only"
            lines.append(
                f"{self.method_choice.currentText()} normalisation is fitted to {where} when "
                "training starts, stored in the checkpoint and applied to every image the "
                "model sees, in training and in every explanation."
            )
        if self._graph:
            lines.append("HED jitter is for bag and image models, not nuclei graphs.")
        self.note.setText(" ".join(lines))
        self.note.setVisible(bool(lines))

    # -- the config -------------------------------------------------------------------------
    def sections(self) -> dict:
        """The config's ``stain`` and ``augment`` sections for the current choices (an empty
        dict for the defaults). ValueError: an image-file reference not chosen or missing."""
        out: dict = {}
        if self.method is not None:
            stain = {
                "method": self.method,
                "reference": TRAINING_SET,
                "on_no_tissue": "keep" if self.keep_blank.isChecked() else "raise",
            }
            if self.from_file:
                text = self.reference_edit.text().strip()
                if not text:
                    raise ValueError("stain normalisation: choose a reference image file")
                path = Path(text).expanduser()
                if not path.is_file():
                    raise ValueError(f"stain normalisation: reference image {path} not found")
                stain["reference"] = str(path.resolve())
            out["stain"] = stain
        if self.jitter_check.isChecked() and not self._graph:
            out["augment"] = {"hed_jitter": round(self.jitter_strength.value(), 4)}
        return out
