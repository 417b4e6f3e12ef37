"""The training dock's Model library tab (:mod:`histoview.viewer._train_widget`).

:class:`LibraryPanel` lists the user model library and the bundled demo weights, and
renames, deletes, exports (never overwriting) and asks the dock to evaluate the selected
entry; every change refreshes the explanation widgets' model lists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from histoview.viewer._train_widget_parts import _wrapped_label, metrics_text


def stain_text(meta: dict) -> str:
    """One line on a checkpoint's stain handling: its normaliser (applied to every image it
    sees) and the HED jitter it was trained with."""
    from histoview.preprocessing.stain import StainNormaliser

    section = meta.get("stain_normalisation")
    text = "stain: " + (
        StainNormaliser.from_dict(section).describe() if section else "not normalised"
    )
    jitter = (meta.get("input") or {}).get("hed_jitter")
    return text + (f"; HED jitter {jitter:g} in training" if jitter else "")


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
            stain_text(e.meta),
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
