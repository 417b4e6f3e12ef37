"""The compare dock's switch between one view and the grid: **Side by side** and **Stacked**.

:class:`PanelSwitching` is a mixin of :class:`~histoview.viewer._compare.CompareWidget`
(it uses the widget's viewer, image choice, job queue and status). A panel's layers
(:mod:`histoview.viewer._compare_panels`) are made the first time, one per event-loop turn,
and kept, hidden from the layer list; switching then only changes visibility, colour
limits, overlays and the grid.

From the buttons a switch runs in steps, one per event-loop turn, so that the viewer never
waits long: the layer order, the grid and what is hidden in one scene update, then one
panel (side by side) or one overlay (stacked) per turn. Overlays are hidden in the first
step and shown again in theirs because vispy rebuilds a visual's shaders on its first draw
in another view (the grid's viewboxes or the single view), which under software OpenGL
takes tens of milliseconds per layer. A switch asked for while another is under way first
finishes that one (:meth:`PanelSwitching._flush_steps`). Scripts (``wait=True``) get the
same steps at once.
"""

from __future__ import annotations

from histoview.viewer import _compare_panels as panels
from histoview.viewer import _compare_parts as parts


def _key(layer):
    """A dictionary key for ``layer`` that a proxy of it shares."""
    return layer.unique_id


def _has_contrast(layer) -> bool:
    """Whether an explanation layer's values differ enough to paint (overlays' record)."""
    return bool((layer.metadata.get("histoview") or {}).get("contrast", True))


class PanelSwitching:
    """Side by side / stacked for the compare widget (a mixin)."""

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
        from histoview.viewer._layer_updates import insert_inactive

        layers = self.viewer.layers
        index = layers.index(anchor) + offset if anchor in layers else len(layers)
        insert_inactive(self.viewer, index, layer)  # a helper layer: never the active one
        panels.hide_rows(panels.layer_list_view(self), layers)

    def side_by_side(self, _checked=False, *, wait: bool = True) -> None:
        """One grid panel per explanation of the selected image (tissue, overlay, companion).

        ``wait`` (scripts): everything now. Otherwise (the button) in steps, one per
        event-loop turn: the panel layers still missing, the grid, then one panel at a time.
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
        self._queue(*jobs, lambda: self._show_panels(base, stepwise=True), first=True)

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

    def _steps(self, steps: list, stepwise: bool) -> None:
        """Run ``steps`` now, or one per event-loop turn before other waiting jobs (a later
        switch first runs what is left of them, :meth:`_flush_steps`)."""
        if not stepwise:
            for step in steps:
                step()
            return
        pending = self._pending_steps = list(steps)

        def next_step():
            if pending is self._pending_steps and pending:
                pending.pop(0)()

        self._queue(*(next_step for _ in steps), first=True)

    def _flush_steps(self) -> None:
        """Finish the steps of a switch still under way, so that the next one starts from a
        whole state."""
        pending, self._pending_steps = self._pending_steps, []
        while pending:
            pending.pop(0)()

    def _show_panels(self, base, *, stepwise: bool = False) -> None:
        """Switch to the grid (every panel layer exists already): the layer order, the other
        layers hidden and the grid in one scene update, then each panel's visibility and
        colour scale in one of its own (``stepwise``: one per event-loop turn)."""
        if not self._side_wanted:
            return
        self._side_wanted = False
        self._flush_steps()
        layers, grid = self.viewer.layers, parts.grid_of(self.viewer)
        if self.side_by_side_on or self._saved:
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
        lines = panels.title_lines(r[0] for r in rows)
        view = panels.layer_list_view(self)
        with panels.one_scene_update(layers, view):
            for lay in orphans:  # panels of explanations that are gone
                layers.remove(lay)
            if [_key(lay) for lay in layers] != [_key(lay) for lay in order]:
                parts.reorder(layers, order)
            for lay in others:
                lay.visible = False
            for row in rows:  # shown panel by panel below (vispy builds shaders when drawn)
                self._main(row).visible = False
            grid.stride = -panels.STRIDE
            grid.shape = parts.grid_shape(n, self._canvas_size(), world_hw, panels.margins(lines))
            grid.spacing = 0.02
            grid.enabled = True
        self._saved["notice"] = parts.notice_for_grid(self.viewer)

        def show(row):
            main = self._main(row)
            with panels.one_scene_update(layers, view):
                for lay in row:
                    if parts.role(lay) in panels.PANEL_ROLES:
                        lay.visible = True
                main.visible = True
                main.name_overlay.visible = False
                parts.refresh_overlay(main, True)
                if not _has_contrast(main):  # nothing to paint: the title says "no contrast"
                    main.opacity = 0.0

        def finish():
            self.side_by_side_on = True
            self._fitted = (base, lines)
            panels.fit_panels(self.viewer, base, lines)
            # titles and colour bars one per event-loop turn: napari places every canvas
            # overlay of every grid cell again for each one it updates
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

        self._steps([*(lambda r=row: show(r) for row in rows), finish], stepwise)

    def stacked(self, _checked=False, *, wait: bool = True) -> None:
        """One view, the overlays over the base image shown as before (undoes :meth:`side_by_side`);
        the panel layers stay, hidden, for the next time. ``wait`` (scripts): all now;
        otherwise (the button) the grid off and the layers' order and visibility in one
        event-loop turn, then each overlay's own values back in one of its own."""
        self._side_wanted = False
        self._flush_steps()
        layers = self.viewer.layers
        saved, self._saved = self._saved, {}
        grid = parts.grid_of(self.viewer)
        view = panels.layer_list_view(self)
        mains = [lay for lay in layers if saved and _key(lay) in saved["mains"]]
        with panels.one_scene_update(layers, view):
            grid.enabled = False  # first: overlay changes are cheap without the grid
            for lay in layers:
                if parts.role(lay) in panels.PANEL_ROLES:
                    lay.name_overlay.visible = False
                    lay.visible = False
            for lay in mains:  # back one by one below (vispy builds shaders when drawn)
                lay.visible = False
            if saved:
                grid.stride, grid.shape, grid.spacing = saved["grid"]
                for lay in layers:
                    if _key(lay) in saved["visible"]:
                        lay.visible = saved["visible"][_key(lay)]
                position = {k: i for i, k in enumerate(saved["order"])}
                order = sorted(layers, key=lambda lay: position.get(_key(lay), len(position)))
                if [_key(lay) for lay in layers] != [_key(lay) for lay in order]:
                    parts.reorder(layers, order)
        if saved:
            parts.restore_notice(self.viewer, saved.get("notice", {}))
        self.side_by_side_on = False
        self.viewer.reset_view()
        self.status.setText(
            "stacked: one view over the tissue; the eye in the layer list or Ctrl+Shift+Up / "
            "Down shows another overlay"
        )

        def restore(lay):  # no batch: nothing here changes which layers are shown
            with panels.one_scene_update(layers, view, batch=False):
                parts.refresh_overlay(lay, False)
                lay.opacity, lay.name_overlay.visible, lay.visible = saved["mains"][_key(lay)]
                bar = parts.colorbar(lay)
                if bar is not None:
                    bar.visible = False

        self._steps([lambda m=m: restore(m) for m in mains], not wait)

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
