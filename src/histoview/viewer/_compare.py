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
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
from qtpy import QtWidgets as qw
from qtpy.QtCore import Qt, QTimer

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import list_methods
from histoview.viewer import _compare_panels as panels
from histoview.viewer import _compare_parts as parts
from histoview.viewer._layer_choice import is_explanation, is_tissue_image, layer_choice, same_layer
from histoview.viewer.overlays import add_layer_data, layer_pixel_size

HELP = {
    "run": "Explain the image with every method that has weights "
    f"({', '.join(list_methods(run_all=True))}), then compute agreement and faithfulness. "
    "Runs in the background.",
    "analyse": "Agreement (Spearman, top-10 % IoU) and faithfulness (deletion / insertion) "
    "of the explanations already shown over this image.",
    "side": "One panel per explanation, linked pan and zoom; every map on its own 0-1 scale "
    "(0 = its lowest value on this image, 1 = its highest).",
    "stacked": "Back to one view with all overlays stacked over the tissue.",
    "threshold": "Hide values below this fraction of the selected heatmap's range; side by "
    "side, the rest is outlined.",
    "png": "The comparison figure (panels, colour bars, methods, prediction, model hash, scale "
    "bar, file name, date, research-use notice) as a PNG.",
    "pdf": "The comparison figure as a one-page PDF with agreement and faithfulness.",
    "annotations": "GeoJSON (QuPath) and CSV per explanation: <name>.<method>.geojson / .csv.",
}


def _key(layer):
    """A dictionary key for ``layer`` that a proxy of it shares."""
    return layer.unique_id


def _has_contrast(layer) -> bool:
    """Whether an explanation layer's values differ enough to paint (overlays' record)."""
    return bool((layer.metadata.get("histoview") or {}).get("contrast", True))


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
        from napari.layers import Image, Layer

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
        self.stacked_button = _button("Stacked", HELP["stacked"], self.stacked)
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
        self.table_note = qw.QLabel(
            "Spearman rank correlation above the diagonal, "
            "top-10 % IoU below (hover a cell for both)."
        )
        self.table_note.setWordWrap(True)
        self.figure_view = qw.QLabel(
            "Faithfulness curves appear here after Run all methods or Agreement & faithfulness."
        )
        self.figure_view.setWordWrap(True)
        self.figure_view.setAlignment(Qt.AlignmentFlag.AlignCenter)
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
        canvas_events = getattr(getattr(viewer, "canvas", None), "events", None)
        if canvas_events is not None and hasattr(canvas_events, "size"):
            canvas_events.size.connect(self._canvas_resized)

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
            self.legend,
            box(
                "Threshold", self.heatmap_choice.native, self.threshold_slider, self.threshold_label
            ),
            box("Agreement", self.table_note, self.table),
            box("Faithfulness: deletion and insertion", self.figure_view),
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

    # -- side by side / stacked -------------------------------------------------------------------
    def _layers_of(self, main, role: str) -> list:
        return [
            lay
            for lay in self.viewer.layers
            if parts.role(lay) == role and panels.main_of(lay) == _key(main)
        ]

    def _panel_layer(self, main, role: str):
        found = self._layers_of(main, role)
        return found[0] if found else None

    def _base_of(self, main):
        name = ((main.metadata.get("histoview") or {}).get("explanation") or {}).get("image_layer")
        base = self.image_layer()
        if base is not None and (name is None or base.name == name):
            return base
        return next((lay for lay in self.viewer.layers if lay.name == name), None)

    @staticmethod
    def _main(group):
        return next(lay for lay in group if "histoview_explanation" in lay.metadata)

    def _panel_jobs(self, base, groups) -> list:
        """One job per panel layer still to make: a tissue under each group, a threshold
        outline over each group that has no second layer."""
        jobs = []
        for group in groups:
            main = self._main(group)
            if self._panel_layer(main, "tissue") is None:
                jobs.append(lambda m=main, g=group: self._add_tissue(base, m, g))
            if len(group) == 1 and self._panel_layer(main, "outline") is None:
                jobs.append(lambda m=main: self._insert_at(panels.outline_layer(m, base), m, 1))
        return jobs

    def _add_tissue(self, base, main, group) -> None:
        """The panel's tissue under ``group``; the overlay's colour bar is styled for the
        panel once here, so that switching only shows and hides it."""
        self._insert_at(panels.tissue_layer(base, main), group[0], 0)
        panels.style_colorbar(parts.colorbar(main))

    def _insert_at(self, layer, anchor, offset: int) -> None:
        """Insert ``layer`` below (``offset`` 0) or above (1) ``anchor``, or on top when
        ``anchor`` is gone."""
        layers = self.viewer.layers
        index = layers.index(anchor) + offset if anchor in layers else len(layers)
        layers.insert(index, layer)
        panels.hide_rows(panels.layer_list_view(self), layers)

    def side_by_side(self, _checked=False, *, wait: bool = True) -> None:
        """One grid panel per explanation of the selected image (tissue, overlay, companion).

        Panel layers still missing are made first: all at once (``wait``, for scripts), or
        one per event-loop turn (the button), the switch following when they are ready.
        """
        base = self.image_layer()
        if base is None:
            self._error("select an image layer first")
            return
        if not parts.explanation_groups(self.viewer.layers, base):
            self._error(f"no explanations over {base.name!r}: run all methods first")
            return
        self._side_wanted = True
        if wait:
            self._drain()
            for job in self._panel_jobs(base, parts.explanation_groups(self.viewer.layers, base)):
                job()
            self._show_panels(base)
            self._drain()
        else:
            self._queue(lambda: self._plan_side_by_side(base))

    def _plan_side_by_side(self, base) -> None:
        """Queue the panel layers still missing, then the switch (jobs run after the layers
        that were waiting, so new explanations get their panels too)."""
        if not self._side_wanted or base not in self.viewer.layers:
            return
        jobs = self._panel_jobs(base, parts.explanation_groups(self.viewer.layers, base))
        self._selection_before = self.viewer.layers.selection.active
        if jobs:
            self.status.setText(f"preparing {len(jobs)} panel layers...")
        self._queue(*jobs, lambda: self._show_panels(base), first=True)

    def _panels_of(self, base):
        """``(panels, extras)``: each panel's layers, bottom to top - [tissue, edges, nuclei]
        or [tissue, map, threshold outline] - and the group layers that stay out of the
        panels (a nuclei explanation's outlines)."""
        rows, extras = [], []
        for group in parts.explanation_groups(self.viewer.layers, base):
            main = self._main(group)
            rest = [lay for lay in group if _key(lay) != _key(main)]
            tissue = self._panel_layer(main, "tissue")
            outline = None if rest else self._panel_layer(main, "outline")
            if tissue is None or (not rest and outline is None):
                raise RuntimeError(f"the panel of {main.name!r} is not ready")
            rows.append([tissue, rest[0], main] if rest else [tissue, main, outline])
            extras.extend(rest[1:])
        return rows, extras

    def _show_panels(self, base) -> None:
        """Switch to the grid: only visibility, colour limits, overlays and grid settings
        change, in one scene update (every panel layer exists already)."""
        if not self._side_wanted:
            return
        self._side_wanted = False
        layers, grid = self.viewer.layers, parts.grid_of(self.viewer)
        if self.side_by_side_on:
            self.stacked()
        rows, extras = self._panels_of(base)
        mains = {_key(lay) for lay in parts.explanation_layers(layers)}
        in_panels = {_key(lay) for r in rows for lay in r}
        orphans = [
            lay
            for lay in layers
            if parts.role(lay) in panels.PANEL_ROLES and panels.main_of(lay) not in mains
        ]
        order = panels.panel_order([lay for lay in layers if lay not in orphans], rows, extras)
        others = [lay for lay in order if _key(lay) not in in_panels]
        self._saved = {
            "order": [_key(lay) for lay in layers if lay not in orphans],
            "visible": {_key(lay): lay.visible for lay in others},
            "grid": (grid.stride, grid.shape, grid.spacing),
            "mains": {
                _key(m): (m.opacity, m.name_overlay.visible, m.visible)
                for m in (self._main(r) for r in rows)
            },
        }
        n = len(rows)
        shape0 = parts.base_shape(base)
        world_hw = (shape0[0] * abs(base.scale[-2]), shape0[1] * abs(base.scale[-1]))
        with panels.one_scene_update(layers):
            for lay in orphans:  # panels of explanations that are gone
                layers.remove(lay)
            if [_key(lay) for lay in layers] != [_key(lay) for lay in order]:
                parts.reorder(layers, order)
            for lay in others:
                lay.visible = False
            for row in rows:
                main = self._main(row)
                for lay in row:
                    if parts.role(lay) in panels.PANEL_ROLES:
                        lay.visible = True
                main.visible = True
                main.name_overlay.visible = False
                parts.refresh_overlay(main, True)
                if not _has_contrast(main):  # nothing to paint: the title says "no contrast"
                    main.opacity = 0.0
            grid.stride = -panels.STRIDE
            lines = panels.title_lines(r[0] for r in rows)
            grid.shape = parts.grid_shape(n, self._canvas_size(), world_hw, panels.margins(lines))
            grid.spacing = 0.02
            grid.enabled = True
        self._saved["notice"] = parts.notice_for_grid(self.viewer)
        self.side_by_side_on = True
        self._fitted = (base, lines)
        panels.fit_panels(self.viewer, base, lines)
        # titles and colour bars one per event-loop turn: napari places every canvas overlay
        # of every grid cell again for each one it updates, so all at once would be one
        # long freeze
        jobs = []
        for row in rows:
            main = self._main(row)
            jobs.append(lambda t=row[0]: self._show_overlay(t.name_overlay))
            if _has_contrast(main):
                jobs.append(lambda m=main: self._show_overlay(parts.colorbar(m)))
        self._queue(*jobs, first=True)
        self._restore_selection()
        self._hide_panel_rows()
        methods = [self._main(r).metadata["histoview_explanation"].method for r in rows]
        self.legend.setText(parts.colour_legend(methods))
        self.status.setText(
            f"side by side: {n} panels, grid {grid.shape[0]} x {grid.shape[1]}; colour: "
            "each map from 0 (its lowest value) to 1 (its highest)"
        )

    def stacked(self, _checked=False) -> None:
        """One view, all overlays stacked over the base image (undoes :meth:`side_by_side`);
        the panel layers stay, hidden, for the next time."""
        self._side_wanted = False
        layers = self.viewer.layers
        saved, self._saved = self._saved, {}
        grid = parts.grid_of(self.viewer)
        with panels.one_scene_update(layers):
            grid.enabled = False  # first: overlay changes are cheap without the grid
            for lay in layers:
                if parts.role(lay) in panels.PANEL_ROLES:
                    lay.name_overlay.visible = False
                    lay.visible = False
            if saved:
                grid.stride, grid.shape, grid.spacing = saved["grid"]
                for lay in layers:
                    key = _key(lay)
                    if key in saved["mains"]:
                        parts.refresh_overlay(lay, False)
                        lay.opacity, lay.name_overlay.visible, lay.visible = saved["mains"][key]
                        bar = parts.colorbar(lay)
                        if bar is not None:
                            bar.visible = False
                    elif key in saved["visible"]:
                        lay.visible = saved["visible"][key]
                position = {k: i for i, k in enumerate(saved["order"])}
                order = sorted(layers, key=lambda lay: position.get(_key(lay), len(position)))
                if [_key(lay) for lay in layers] != [_key(lay) for lay in order]:
                    parts.reorder(layers, order)
        if saved:
            parts.restore_notice(self.viewer, saved.get("notice", {}))
        self.side_by_side_on = False
        self.viewer.reset_view()
        self.status.setText("stacked: all overlays over the tissue")

    def _canvas_resized(self, _event=None) -> None:
        """Side by side, keep the tissue fitted beside its title and colour bar."""
        if self.side_by_side_on and self._fitted is not None:
            base, lines = self._fitted
            if base in self.viewer.layers:
                panels.fit_panels(self.viewer, base, lines)

    def _show_overlay(self, overlay) -> None:
        if self.side_by_side_on and overlay is not None:
            overlay.visible = True

    def _restore_selection(self) -> None:
        before = getattr(self, "_selection_before", None)
        self._selection_before = None
        active = self.viewer.layers.selection.active
        if active is not None and parts.role(active) in panels.PANEL_ROLES:
            keep = before if before is not None and before in self.viewer.layers else None
            self.viewer.layers.selection.active = keep or self.image_layer()

    def _layers_changed(self, _event=None) -> None:
        self._rows_timer.start()  # once the list settles: hide the panel layers' rows

    def _hide_panel_rows(self) -> None:
        panels.hide_rows(panels.layer_list_view(self), self.viewer.layers)

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
        from histoview.viewer.overlays import Placement

        base = self.image_layer()
        if base is None:
            self._error("select an image layer first")
            return
        if self._worker is not None:
            self._error("already running: cancel it first")
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
            Placement.of(base),
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
        worker.returned.connect(lambda result: self._queue(lambda: self._show_results(result)))
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
            _, expl, layer_data, predict, rgb = item
            self.register_predictor(expl, predict, rgb)
            # the worker prepared the layers; add them one per event-loop turn
            for one in layer_data or []:
                self._queue(lambda one=one: self._add_prepared(base, one))

    def _add_prepared(self, base, layer_data) -> None:
        if base in self.viewer.layers:
            add_layer_data(self.viewer, [layer_data])

    def _show_results(self, result) -> None:
        from histoview.viewer.overlays import _set_notice

        self.agreement = result.get("agreement")
        self.faithfulness = dict(result.get("faithfulness") or {})
        parts.fill_agreement_table(self.table, self.agreement)
        figure = result.get("figure")
        if figure is not None:
            self.figure, rgba = figure
            self._show_figure(rgba)
        self.progress.setValue(self.progress.maximum())
        lines = [f"compared {len(result.get('labels', []))} explanations"]
        if result.get("skipped"):
            lines.append("skipped (no weights): " + "; ".join(result["skipped"]))
        lines += result.get("notes", [])
        self.status.setText("\n".join(lines))
        base = self.image_layer()
        if base is not None:
            groups = parts.explanation_groups(self.viewer.layers, base)
            methods = [self._main(g).metadata["histoview_explanation"].method for g in groups]
            self.legend.setText(parts.colour_legend(methods) if methods else "")
        if not self.side_by_side_on:  # side by side keeps the notice clear of the panel titles
            _set_notice(self.viewer, parts.explanation_layers(self.viewer.layers))

    def _show_figure(self, rgba: np.ndarray) -> None:
        from qtpy.QtGui import QImage, QPixmap

        h, w = rgba.shape[:2]
        image = QImage(rgba.tobytes(), w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.figure_view.setText("")
        self.figure_view.setPixmap(QPixmap.fromImage(image))
        self.figure_view.setMinimumHeight(h)

    def _on_finished(self) -> None:
        self._worker = None
        for b in (self.run_button, self.analyse_button):
            b.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._resume_side:
            self._resume_side = False
            self._queue(lambda: self.side_by_side(wait=False))

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
