"""The compare dock widget: every explanation method on one image, side by side.

* **Side by side** uses napari's grid mode: one camera for all panels, so they pan and
  zoom together. Each panel gets its own view of the tissue - an image layer sharing the
  base layer's data array (no copy) - under one explanation's layers. Grid cells hold a
  fixed number of layers (``viewer.grid.stride``), so panels with fewer layers (a heatmap
  beside nuclei points + edges) are padded with hidden 1-pixel spacer layers; a negative
  stride puts the first method top-left. Every overlay then shows its values min-max
  normalised per method to [0, 1] (layer data for heatmaps, a ``normalised importance``
  feature for nuclei) with contrast limits (0, 1), so one colour means the same relative
  importance in every panel; each panel shows napari's colour bar (0 to 1) and, as its
  title, napari's layer-name overlay of the explanation (method, class, probability).
* **Stacked** removes the panel tissue layers and spacers (the data was shared), turns
  the grid off, and puts the overlays back over the base image with their raw values.
* **Run all methods** explains with every method whose weights load (others are listed
  and skipped) in a worker thread, then computes agreement (Spearman, top-10 % IoU) and
  faithfulness (deletion / insertion) there too; **Agreement & faithfulness** does the
  same for the explanations already in the viewer.
* The **threshold** slider hides values under a fraction of the selected heatmap's range
  (NaN is transparent in napari's colour maps); DT Grad-CAM starts at its own threshold.
* Exports: the report figure (:func:`histoview.explain.report.render_figure`) as PNG or
  PDF, and GeoJSON + CSV annotations per explanation. An existing file is overwritten only
  when the user confirms; otherwise a free name is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy import QtWidgets as qw
from qtpy.QtCore import Qt

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import list_methods
from histoview.viewer import _compare_parts as parts
from histoview.viewer._layer_choice import is_explanation, is_tissue_image, layer_choice, same_layer
from histoview.viewer.overlays import add_explanation_layers, layer_pixel_size

HELP = {
    "run": "Explain the image with every method that has weights "
    f"({', '.join(list_methods(run_all=True))}), then compute agreement and faithfulness. "
    "Runs in the background.",
    "analyse": "Agreement (Spearman, top-10 % IoU) and faithfulness (deletion / insertion) "
    "of the explanations already shown over this image.",
    "side": "One panel per method, linked pan and zoom, one colour scale (normalised 0-1).",
    "stacked": "Back to one view with all overlays stacked over the tissue.",
    "threshold": "Hide values below this fraction of the selected heatmap's range.",
    "png": "The comparison figure (panels, colour bars, methods, prediction, model hash, scale "
    "bar, file name, date, research-use notice) as a PNG.",
    "pdf": "The comparison figure as a one-page PDF with agreement and faithfulness.",
    "annotations": "GeoJSON (QuPath) and CSV per explanation: <name>.<method>.geojson / .csv.",
}


def _key(layer):
    """A dictionary key for ``layer`` that a proxy of it shares."""
    return layer.unique_id


def _button(text: str, tip: str, slot) -> qw.QPushButton:
    b = qw.QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(slot)
    return b


class CompareWidget(qw.QWidget):
    """Dock widget comparing explanation methods on one image layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # From the plugin menu ``napari_viewer`` is napari's PublicOnlyProxy, whose layers are
        # proxies too: layers are matched by ``unique_id`` (same_layer), never by identity.
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from napari.layers import Image, Layer

        self.viewer = viewer = napari_viewer
        self.side_by_side_on = False
        self.steps = parts.FAITHFULNESS_STEPS
        self.methods = tuple(list_methods(run_all=True))
        self.agreement = None
        self.faithfulness: dict = {}
        self._worker = None
        self._saved: dict = {}
        self._predictors: dict[int, tuple] = {}  # id(expl) -> (expl, predict, rgb)
        self._resume_side = False
        self._shown_heatmap = None

        # napari keeps both lists current while the widget is docked (see reset_choices)
        self.image_choice = layer_choice(Image, is_tissue_image, label="image")
        self.heatmap_choice = layer_choice(Layer, is_explanation, label="heatmap")
        self.heatmap_choice.changed.connect(self._heatmap_changed)
        self.run_button = _button("Run all methods", HELP["run"], self.run_all)
        self.cancel_button = _button("Cancel", "Stop after the current step", self.cancel)
        self.cancel_button.setEnabled(False)
        self.analyse_button = _button("Agreement && faithfulness", HELP["analyse"], self.analyse)
        self.progress = qw.QProgressBar()
        self.status = qw.QLabel("")
        self.status.setWordWrap(True)
        self.side_button = _button("Side by side", HELP["side"], self.side_by_side)
        self.stacked_button = _button("Stacked", HELP["stacked"], self.stacked)
        self.threshold_slider = qw.QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setToolTip(HELP["threshold"])
        self.threshold_slider.valueChanged.connect(self._threshold_changed)
        self.threshold_label = qw.QLabel("no heatmap selected")
        self.threshold_label.setWordWrap(True)
        self.table = qw.QTableWidget(0, 0)
        self.table.setFixedHeight(60)
        self.table_note = qw.QLabel(
            "Spearman rank correlation above the diagonal, "
            "top-10 % IoU below (hover a cell for both)."
        )
        self.table_note.setWordWrap(True)
        self.figure = Figure(figsize=(4.2, 2.4), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.png_button = _button("Save figure PNG", HELP["png"], self.save_png)
        self.pdf_button = _button("Save report PDF", HELP["pdf"], self.save_pdf)
        self.annotations_button = _button(
            "Export annotations", HELP["annotations"], self.export_annotations
        )
        notice = qw.QLabel(RESEARCH_NOTICE)
        notice.setWordWrap(True)
        notice.setStyleSheet("color: #e0a040;")
        self._layout(notice)
        parts.draw_faithfulness(self.figure, {})
        self.reset_choices()
        # also when not docked (scripts, tests); napari's own connection to reset_choices,
        # made when it docks the widget, is then not added twice
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        viewer.layers.selection.events.active.connect(self._active_changed)

    def _layout(self, notice) -> None:
        def box(title, *widgets):
            group = qw.QGroupBox(title)
            inner = qw.QVBoxLayout(group)
            for w in widgets:
                inner.addWidget(w)
            return group

        def row(*widgets):
            holder = qw.QWidget()
            inner = qw.QHBoxLayout(holder)
            inner.setContentsMargins(0, 0, 0, 0)
            for w in widgets:
                inner.addWidget(w, 1)
            return holder

        main = qw.QVBoxLayout(self)
        for w in (
            row(qw.QLabel("image"), self.image_choice.native),
            row(self.run_button, self.cancel_button),
            self.analyse_button,
            self.progress,
            self.status,
            row(self.side_button, self.stacked_button),
            box(
                "Threshold", self.heatmap_choice.native, self.threshold_slider, self.threshold_label
            ),
            box("Agreement", self.table_note, self.table),
            box("Faithfulness: deletion and insertion", self.canvas),
            row(self.png_button, self.pdf_button, self.annotations_button),
            notice,
        ):
            main.addWidget(w)
        main.addStretch(1)

    # -- choices ----------------------------------------------------------------------------------
    def image_layer(self):
        return self.image_choice.value

    def heatmap_layer(self):
        return self.heatmap_choice.value

    @property
    def running(self) -> bool:
        """Whether a run or an analysis is in progress in the worker thread."""
        return self._worker is not None

    def reset_choices(self, _event=None) -> None:
        """Refresh the image and heatmap lists from the viewer's layers.

        napari calls this on a docked widget when layers are inserted, removed, reordered or
        renamed (as for magicgui widgets).
        """
        before = self._shown_heatmap
        with self.heatmap_choice.changed.blocked():
            self.image_choice.reset_choices()
            self.heatmap_choice.reset_choices()
            choices = [c for c in self.heatmap_choice.choices if c is not None]
            if choices and not any(same_layer(c, before) for c in choices):
                # a new list: the selected explanation, else the newest (top) one
                active = self.viewer.layers.selection.active
                self.heatmap_choice.value = next(
                    (c for c in choices if same_layer(c, active)), choices[-1]
                )
        if not same_layer(self.heatmap_layer(), self._shown_heatmap):
            self._heatmap_changed()

    def _active_changed(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        match = next((c for c in self.heatmap_choice.choices if same_layer(c, active)), None)
        if match is not None:
            self.heatmap_choice.value = match

    # -- threshold --------------------------------------------------------------------------------
    def _heatmap_changed(self, _index=None) -> None:
        layer = self._shown_heatmap = self.heatmap_layer()
        thr = parts.state(layer).get("threshold") if layer is not None else None
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(round(100 * (thr or 0.0)))
        self.threshold_slider.blockSignals(False)
        if layer is not None and thr:
            parts.refresh_overlay(layer, self.side_by_side_on)
        self.threshold_label.setText(parts.threshold_text(layer, thr))

    def set_threshold(self, value: float) -> None:
        """Show only values >= ``value`` (fraction of the method's range) of the heatmap."""
        self.threshold_slider.setValue(round(100 * float(value)))

    def _threshold_changed(self, value: int) -> None:
        layer = self.heatmap_layer()
        if layer is None:
            return
        thr = value / 100.0
        parts.state(layer)["threshold"] = thr if thr > 0 else None
        try:
            parts.refresh_overlay(layer, self.side_by_side_on)
        except Exception as exc:
            self._error(f"threshold: {exc}")
            return
        self.threshold_label.setText(parts.threshold_text(layer, thr))

    # -- side by side / stacked -------------------------------------------------------------------
    def side_by_side(self, _checked=False) -> None:
        """One grid panel per explanation of the selected image: [tissue, its overlays]."""
        base = self.image_layer()
        if base is None:
            self._error("select an image layer first")
            return
        if self.side_by_side_on:
            self.stacked()
        groups = parts.explanation_groups(self.viewer.layers, base)
        if not groups:
            self._error(f"no explanations over {base.name!r}: run all methods first")
            return
        layers, grid = self.viewer.layers, parts.grid_of(self.viewer)
        self._saved = {
            "order": list(layers),
            "visible": {_key(lay): lay.visible for lay in layers},
            "grid": (grid.stride, grid.shape, grid.spacing),
            "overlays": {},
        }
        stride = 1 + max(len(g) for g in groups)
        panels = []
        for group in groups:
            main = next(lay for lay in group if "histoview_explanation" in lay.metadata)
            tissue = parts.tissue_copy(self.viewer, base, main.name.split(":")[0])
            spacers = [parts.spacer(self.viewer, base) for _ in range(stride - 1 - len(group))]
            panels.append([*spacers, tissue, *group])
            for lay in group:
                self._saved["overlays"][_key(lay)] = (lay, parts.look(lay))
                if lay is main:
                    parts.refresh_overlay(lay, True)
                    parts.panel_look(lay)
        in_panels = {_key(lay) for p in panels for lay in p}
        others = [lay for lay in layers if _key(lay) not in in_panels]
        for lay in others:
            lay.visible = False
        # negative stride: the grid fills from the top of the layer list, first panel top-left
        parts.reorder(layers, others + [lay for p in reversed(panels) for lay in p])
        canvas_hw = self._canvas_size()
        shape0 = parts.base_shape(base)
        world_hw = (shape0[0] * abs(base.scale[-2]), shape0[1] * abs(base.scale[-1]))
        grid.stride = -stride
        grid.shape = parts.grid_shape(len(panels), canvas_hw, world_hw)
        grid.spacing = 0.02
        grid.enabled = True
        self._saved["notice"] = parts.notice_for_grid(self.viewer)
        self.side_by_side_on = True
        self.viewer.reset_view()
        self.status.setText(
            f"side by side: {len(panels)} panels, grid {grid.shape[0]} x "
            f"{grid.shape[1]}; colour scale: importance normalised per method"
        )

    def stacked(self, _checked=False) -> None:
        """One view, all overlays stacked over the base image (undoes :meth:`side_by_side`)."""
        layers = self.viewer.layers
        for lay in [lay for lay in layers if parts.role(lay) is not None]:
            layers.remove(lay)
        saved, self._saved = self._saved, {}
        grid = parts.grid_of(self.viewer)
        grid.enabled = False
        if saved:
            grid.stride, grid.shape, grid.spacing = saved["grid"]
            parts.restore_notice(self.viewer, saved.get("notice", {}))
            for lay, saved_look in saved["overlays"].values():
                if lay in layers:
                    if "histoview_explanation" in lay.metadata:
                        parts.refresh_overlay(lay, False)
                    parts.restore_look(lay, saved_look)
            for lay in layers:
                if _key(lay) in saved["visible"]:
                    lay.visible = saved["visible"][_key(lay)]
            order = [lay for lay in saved["order"] if lay in layers]
            parts.reorder(layers, order + [lay for lay in layers if lay not in order])
        self.side_by_side_on = False
        self.viewer.reset_view()
        self.status.setText("stacked: all overlays over the tissue")

    def _canvas_size(self):
        canvas = getattr(self.viewer, "canvas", None)
        size = tuple(getattr(canvas, "size", ()) or ())
        return size if len(size) == 2 and min(size) > 1 else None

    # -- running ----------------------------------------------------------------------------------
    @staticmethod
    def _load(method: str):
        """(net, meta, sha) for ``method``; replaced in tests. Raises when weights are missing."""
        from histoview.explain.run import load_for_method

        return load_for_method(method)

    def register_predictor(self, expl, predict, image=None) -> None:
        """Use ``predict`` (images -> probabilities) for ``expl``'s faithfulness curves."""
        self._predictors[id(expl)] = (expl, predict, image)

    def run_all(self, _checked=False, *, then_side_by_side: bool | None = None) -> None:
        """Explain with every method that has weights, in a worker thread; then compare.

        ``then_side_by_side``: show the panels when done (default: if they were shown before).
        """
        base = self.image_layer()
        if base is None:
            self._error("select an image layer first")
            return
        self._resume_side = self.side_by_side_on if then_side_by_side is None else then_side_by_side
        if self.side_by_side_on:
            self.stacked()
        data = base.data if base.multiscale else np.asarray(base.data)
        self._start(
            parts.run_all_work,
            data,
            base.multiscale,
            layer_pixel_size(base),
            tuple(self.methods),
            self._load,
            self.steps,
            base=base,
        )

    def analyse(self, _checked=False) -> None:
        from histoview.io import to_rgb8

        try:
            base, expls = self._explanations()
        except ValueError as exc:
            self._error(str(exc))
            return
        image = None if base.multiscale else np.asarray(base.data)
        items = []
        for e in expls:  # faithfulness needs a model: only for explanations registered with one
            _, predict, rgb = self._predictors.get(id(e), (e, None, None))
            if predict is not None and rgb is None and image is not None:
                rgb = to_rgb8(image)
            items.append((e, predict, rgb))
        self._start(parts.analysis_work, items, self.steps, base=base)

    def _start(self, func, *args, base) -> None:
        from napari.qt.threading import create_worker

        from histoview.viewer._compat import avoid_triton_llvm_clash

        if self._worker is not None:
            self._error("already running: cancel it first")
            return
        avoid_triton_llvm_clash()
        worker = create_worker(func, *args, _start_thread=False)
        worker.yielded.connect(lambda item: self._on_yielded(base, item))
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: self._error(str(exc)))
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        for b in (self.run_button, self.analyse_button):
            b.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("running...")
        worker.start()

    def cancel(self, _checked=False) -> None:
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("cancelling after the current step...")

    def _on_yielded(self, base, item) -> None:
        if item[0] == "progress":
            _, done, total, text = item
            self.progress.setMaximum(total)
            self.progress.setValue(done)
            self.status.setText(text)
        elif item[0] == "explanation":
            _, expl, predict, rgb = item
            if base in self.viewer.layers:
                add_explanation_layers(self.viewer, base, expl)
            self.register_predictor(expl, predict, rgb)

    def _on_returned(self, result) -> None:
        from histoview.viewer.overlays import _set_notice

        self.agreement = result.get("agreement")
        self.faithfulness = dict(result.get("faithfulness") or {})
        parts.fill_agreement_table(self.table, self.agreement)
        parts.draw_faithfulness(self.figure, self.faithfulness)
        self.progress.setValue(self.progress.maximum())
        lines = [f"compared {len(result.get('labels', []))} explanations"]
        if result.get("skipped"):
            lines.append("skipped (no weights): " + "; ".join(result["skipped"]))
        lines += result.get("notes", [])
        self.status.setText("\n".join(lines))
        if not self.side_by_side_on:  # side by side keeps the notice clear of the panel titles
            _set_notice(self.viewer, parts.explanation_layers(self.viewer.layers))

    def _on_finished(self) -> None:
        self._worker = None
        for b in (self.run_button, self.analyse_button):
            b.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._resume_side:
            self._resume_side = False
            self.side_by_side()

    # -- exports ----------------------------------------------------------------------------------
    def _ask_save_path(self, caption: str, suggested: str, filters: str) -> str | None:
        """A path from the user (None when cancelled); replaced in tests."""
        from qtpy.QtWidgets import QFileDialog

        opts = QFileDialog.Option.DontConfirmOverwrite  # _confirm asks, then picks a free name
        path, _ = QFileDialog.getSaveFileName(self, caption, suggested, filters, options=opts)
        return path or None

    def _confirm(self, question: str) -> bool:
        """Yes/no from the user; replaced in tests."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "histoview", question)
        return answer == QMessageBox.StandardButton.Yes

    def _explanations(self):
        base = self.image_layer()
        if base is None:
            raise ValueError("select an image layer first")
        expls = [
            lay.metadata["histoview_explanation"]
            for g in parts.explanation_groups(self.viewer.layers, base)
            for lay in g
            if "histoview_explanation" in lay.metadata
        ]
        if not expls:
            raise ValueError(f"no explanations over {base.name!r}: run all methods first")
        return base, expls

    def _save_figure(self, kind: str) -> Path | None:
        from histoview.explain.report import save_pdf, save_png

        try:
            base, expls = self._explanations()  # nothing to save: say so before asking
            path = self._ask_save_path(
                f"Save comparison {kind.upper()}",
                f"histoview-compare.{kind}",
                f"{kind.upper()} (*.{kind})",
            )
            if not path:
                return None
            path = Path(path).with_suffix(f".{kind}")
            (target,), overwrite = parts.resolve_targets([path], self._confirm)
            fig = parts.comparison_figure(base, expls, self.agreement, self.faithfulness)
            out = (save_png if kind == "png" else save_pdf)(fig, target, overwrite=overwrite)
        except Exception as exc:
            self._error(f"saving {kind.upper()} failed: {exc}")
            return None
        self.status.setText(f"saved {out}")
        return out

    def save_png(self, _checked=False) -> Path | None:
        return self._save_figure("png")

    def save_pdf(self, _checked=False) -> Path | None:
        return self._save_figure("pdf")

    def export_annotations(self, _checked=False) -> list[Path]:
        """``<stem>.<method>.geojson`` and ``.csv`` per explanation, next to the chosen path."""
        from histoview.explain.export import export_csv, export_geojson

        try:
            base, expls = self._explanations()
            path = self._ask_save_path(
                "Export annotations (one file per method)",
                f"{base.name.split(' ')[0]}.geojson",
                "GeoJSON (*.geojson)",
            )
            if not path:
                return []
            path = Path(path)
            targets, overwrite = parts.resolve_targets(
                parts.annotation_paths(path, expls), self._confirm
            )
            written = []
            for k, expl in enumerate(expls):
                written.append(export_geojson(expl, targets[2 * k], overwrite=overwrite))
                written.append(export_csv(expl, targets[2 * k + 1], overwrite=overwrite))
        except Exception as exc:
            self._error(f"export failed: {exc}")
            return []
        self.status.setText(f"exported {len(written)} files to {path.parent}")
        return written

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"error: {message}")
        show_error(f"histoview: {message}")


#: the plugin's widget contribution: napari inspects ``__init__`` for ``napari_viewer``, so
#: the factory is the class itself (a plain function would be called without the viewer)
compare_widget = CompareWidget
