"""The compare dock widget: every explanation method on one image, side by side.

* **Run all methods** explains with every method whose weights load (others are listed
  and skipped) in a worker thread, which also prepares each overlay's layer data and then
  computes agreement (Spearman, top-10 % IoU), faithfulness (deletion / insertion,
  :mod:`histoview.explain.faithfulness`) and draws the faithfulness figure; the main thread
  only adds the prepared layers, one per event-loop turn, so the viewer never waits on a
  computation. **Agreement & faithfulness** does the same for the explanations already
  in the viewer.
* **Side by side** shows one panel per explanation in napari's grid, panned and zoomed
  together (:mod:`histoview.viewer._compare_panels`): the tissue (the image's data, shared)
  titled with the method and prediction, the overlay on the common colour scale of the
  report (each map min-max normalised on this image: 0 its lowest value, 1 its highest;
  :func:`~histoview.viewer._compare_parts.colour_legend` says what the values are per
  method) and its colour bar beside the tissue. A panel's layers are made the first time
  (one per event-loop turn) and kept, hidden from the layer list; **Stacked** and side by
  side then only switch visibility, colour limits and the grid in one scene update.
* The **threshold** slider hides values under a fraction of the selected heatmap's range
  (NaN is transparent in napari's colour maps) and outlines what is left in its panel;
  DT Grad-CAM starts at its own threshold.
* Exports: the report figure (:func:`histoview.explain.report.render_figure`) as PNG or
  PDF, and GeoJSON + CSV annotations per explanation. An existing file is overwritten only
  when the user confirms; otherwise a free name is used.

The widget's parts live beside it: the runs in :mod:`histoview.viewer._compare_running`, the
switch between side by side and stacked in :mod:`histoview.viewer._compare_switch`, the
exports in :mod:`histoview.viewer._compare_exports` (mixins of :class:`CompareWidget`), the
results display in :mod:`histoview.viewer._compare_results`.
"""

from __future__ import annotations

from collections import deque

from qtpy import QtWidgets as qw
from qtpy.QtCore import Qt, QTimer

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import list_methods
from histoview.viewer import _compare_panels as panels
from histoview.viewer import _compare_parts as parts
from histoview.viewer._compare_exports import ExportActions
from histoview.viewer._compare_running import RunActions
from histoview.viewer._compare_switch import PanelSwitching
from histoview.viewer._compat import canvas_size_event
from histoview.viewer._layer_choice import is_explanation, is_tissue_image, layer_choice, same_layer
from histoview.viewer._widgets import FittedPicture, compact, scrolling

HELP = {
    "run": "Explain the image with every method that has weights "
    f"({', '.join(list_methods(run_all=True))}), then compute agreement and faithfulness. "
    "Runs in the background.",
    "analyse": "Agreement (Spearman, top-10 % IoU) and faithfulness (deletion / insertion) "
    "of the explanations already shown over this image.",
    "side": "One panel per explanation, linked pan and zoom; every map on its own 0-1 scale "
    "(0 = its lowest value on this image, 1 = its highest).",
    "stacked": "Back to one view over the tissue: the overlay you looked at shown, the "
    "others one click on their eye (or Ctrl+Shift+Up / Down) away.",
    "threshold": "Hide values below this fraction of the selected heatmap's range; side by "
    "side, the rest is outlined.",
    "png": "The comparison figure (panels, colour bars, methods, prediction, model hash, scale "
    "bar, file name, date, research-use notice) as a PNG.",
    "pdf": "The comparison figure as a one-page PDF with agreement and faithfulness.",
    "annotations": "GeoJSON (QuPath) and CSV per explanation: <name>.<method>.geojson / .csv.",
}


def _button(text: str, tip: str, slot) -> qw.QPushButton:
    b = qw.QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(slot)
    return b


class CompareWidget(RunActions, PanelSwitching, ExportActions, qw.QWidget):
    """Dock widget comparing explanation methods on one image layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from histoview.viewer._widgets import share_side_evenly

        share_side_evenly(self)  # once docked: not squeezed by the docks beside it
        # From the plugin menu ``napari_viewer`` is napari's PublicOnlyProxy, whose layers are
        # proxies too: layers are matched by ``unique_id`` (same_layer), never by identity.
        from napari.layers import Image, Layer

        from histoview.viewer import _napari_grid
        from histoview.viewer._pathology_view import install

        _napari_grid.install()  # napari's grid placement in one pass (side by side's panels)
        # scale bar, shortcuts, the view re-fitted once the dock has its room, and the
        # canvas hooks every dock installs (see _pathology_view.install)
        install(napari_viewer)
        self.viewer = viewer = napari_viewer
        self.side_by_side_on = False
        self.steps = parts.FAITHFULNESS_STEPS
        self.methods = tuple(list_methods(run_all=True))
        self.agreement = None
        self.faithfulness: dict = {}
        self.figure = None  # the last faithfulness figure (matplotlib, drawn in the worker)
        self._worker = None
        self._saved: dict = {}
        self._predictors: dict[int, tuple] = {}  # id(expl) -> (expl, predict, rgb)
        self._resume_side = False
        self._side_wanted = False  # a side-by-side switch waits for its panels
        self._shown_heatmap = None
        self._pending_steps: list = []  # what is left of a stepwise switch (_compare_switch)
        # main-thread work in small steps, one per event-loop turn (see _pump)
        self._jobs: deque = deque()
        self._pump_timer = QTimer(self)
        self._pump_timer.setSingleShot(True)
        self._pump_timer.setInterval(0)
        self._pump_timer.timeout.connect(self._pump)
        self._rows_timer = QTimer(self)
        self._rows_timer.setSingleShot(True)
        self._rows_timer.setInterval(0)
        self._rows_timer.timeout.connect(self._hide_panel_rows)

        # napari keeps both lists current while the widget is docked (see reset_choices)
        self.image_choice = layer_choice(Image, is_tissue_image, label="image")
        self.heatmap_choice = layer_choice(Layer, is_explanation, label="heatmap")
        self.heatmap_choice.changed.connect(self._heatmap_changed)
        compact(self.image_choice, self.heatmap_choice)  # long layer names: not wider
        self.run_button = _button("Run all methods", HELP["run"], self.run_all)
        self.cancel_button = _button("Cancel", "Stop after the current step", self.cancel)
        self.cancel_button.setEnabled(False)
        self.analyse_button = _button("Agreement && faithfulness", HELP["analyse"], self.analyse)
        self.progress = qw.QProgressBar()
        self.status = qw.QLabel("")
        self.status.setWordWrap(True)
        self.side_button = _button(
            "Side by side", HELP["side"], lambda _checked=False: self.side_by_side(wait=False)
        )
        self.stacked_button = _button(
            "Stacked", HELP["stacked"], lambda _checked=False: self.stacked(wait=False)
        )
        self.legend = qw.QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #a0a0a0; font-size: 10px;")
        self.threshold_slider = qw.QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setToolTip(HELP["threshold"])
        self.threshold_slider.valueChanged.connect(self._threshold_changed)
        self.threshold_label = qw.QLabel("no heatmap selected")
        self.threshold_label.setWordWrap(True)
        self.table = qw.QTableWidget(0, 0)
        self.table.setFixedHeight(60)
        self.table_note = qw.QLabel(parts.TABLE_NOTE)
        self.table_note.setWordWrap(True)
        self.figure_view = FittedPicture(
            "Faithfulness curves appear here after Run all methods or Agreement & faithfulness."
        )
        self.figure_view.setMinimumHeight(60)
        self.png_button = _button("Save figure PNG", HELP["png"], self.save_png)
        self.pdf_button = _button("Save report PDF", HELP["pdf"], self.save_pdf)
        self.annotations_button = _button(
            "Export annotations", HELP["annotations"], self.export_annotations
        )
        notice = qw.QLabel(RESEARCH_NOTICE)
        notice.setWordWrap(True)
        notice.setStyleSheet("color: #e0a040;")
        self._layout(notice)
        self.reset_choices()
        # also when not docked (scripts, tests); napari's own connection to reset_choices,
        # made when it docks the widget, is then not added twice
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        for event in ("inserted", "removed", "moved"):
            getattr(viewer.layers.events, event).connect(self._layers_changed)
        viewer.layers.selection.events.active.connect(self._active_changed)
        self._fitted = None
        size_event = canvas_size_event(viewer)
        if size_event is not None:
            size_event.connect(self._canvas_resized)
        from histoview.viewer._models import warm_up

        # the methods' models loaded in the background: Run all's first click need not wait
        warm_up(
            [(m, None) for m in self.methods],
            load=self._load,
            imports=("scipy.stats", "matplotlib.backends.backend_agg", "matplotlib.figure"),
        )

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

        content = qw.QWidget()  # in a scroll area: docks stacked on a small screen scroll
        main = qw.QVBoxLayout(content)
        for w in (
            row(qw.QLabel("image"), self.image_choice.native),
            row(self.run_button, self.cancel_button),
            self.analyse_button,
            self.progress,
            self.status,
            row(self.side_button, self.stacked_button),
            self.legend,
            box(
                "Threshold", self.heatmap_choice.native, self.threshold_slider, self.threshold_label
            ),
            box("Agreement", self.table_note, self.table),
            box("Faithfulness: deletion and insertion", self.figure_view),
            row(self.png_button, self.pdf_button),
            self.annotations_button,
            notice,
        ):
            main.addWidget(w)
        main.addStretch(1)
        outer = qw.QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scrolling(content))

    # -- choices ----------------------------------------------------------------------------------
    def image_layer(self):
        return self.image_choice.value

    def heatmap_layer(self):
        return self.heatmap_choice.value

    @property
    def running(self) -> bool:
        """Whether a run, an analysis or a switch is in progress (worker or pending steps)."""
        return self._worker is not None or bool(self._jobs)

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
            outline = self._panel_layer(layer, "outline")
            if outline is not None:
                base = self._base_of(layer)
                if base is not None:
                    data, _, _ = panels.outline_data(
                        layer.metadata["histoview_explanation"], thr if thr > 0 else None, base
                    )
                    outline.data = data
        except Exception as exc:
            self._error(f"threshold: {exc}")
            return
        self.threshold_label.setText(parts.threshold_text(layer, thr))

    # -- main-thread work in small steps ----------------------------------------------------------
    def _queue(self, *jobs, first: bool = False) -> None:
        """Run ``jobs`` (callables) on the main thread, one per event-loop turn, in order
        (``first``: before the jobs already waiting)."""
        if first:
            self._jobs.extendleft(reversed(jobs))
        else:
            self._jobs.extend(jobs)
        if self._jobs and not self._pump_timer.isActive():
            self._pump_timer.start()

    def _pump(self) -> None:
        if not self._jobs:
            return
        job = self._jobs.popleft()
        try:
            job()
        except Exception as exc:  # report, keep the viewer usable, drop nothing else
            self._error(str(exc))
        if self._jobs:
            self._pump_timer.start()

    def _drain(self) -> None:
        """Run every waiting job now (scripts and tests that do not run an event loop)."""
        while self._jobs:
            self._pump()

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"error: {message}")
        show_error(f"histoview: {message}")


#: the plugin's widget contribution: napari inspects ``__init__`` for ``napari_viewer``, so
#: the factory is the class itself (a plain function would be called without the viewer)
compare_widget = CompareWidget
