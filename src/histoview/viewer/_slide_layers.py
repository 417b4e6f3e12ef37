"""What a Whole slide run shows over its slide: the tissue mask, the tiles done and the map,
as layers made once and then fed new data (:class:`SlideLayers`, a mixin of
:class:`~histoview.viewer._slide_widget.SlideWidget`, which sets ``viewer``, ``_slide``,
``_method``, ``_region``, ``_synthetic``, ``_layers`` and the progress widgets).

Each slide, method and region has its own map and tiles layers (:meth:`SlideLayers._key`),
named after them; the tissue mask is the slide's. A run shows only its own map over the
slide (two maps' colours would mix), and puts the map's name, whether its weights are
synthetic demo weights, and the research-use line on the canvas.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer

from histoview.explain.methods import get_method, method_title
from histoview.viewer._slide_live import format_progress, placement
from histoview.viewer.overlays import fading_colormap

#: seconds between two layer insertions of this dock (:meth:`SlideLayers._show`)
INSERT_GAP_S = 0.05
#: metadata key of the layers this dock adds (other docks do not list them as images)
SLIDE_KEY = "histoview_slide"


class SlideLayers:
    """The slide dock's layers (a mixin; module docstring)."""

    def _show(self, snap, *, defer: bool = True):
        """Swap ``snap``'s arrays into the layers. A missing layer is made, but (``defer``)
        at most one per :data:`INSERT_GAP_S` (napari's layer insertion is the main thread's
        longest task: ~70 ms of CPU, then a first draw): the rest of ``snap`` follows a moment
        later, so the event loop runs (and the view pans) in between."""
        self._pending = None
        views = [
            ("tiles", snap.tiles, snap.tile_factor, {"colormap": "cyan", "opacity": 0.15}),
        ]
        if snap.values is not None:
            look = {  # as the explain docks' overlays: low values let the tissue show
                "colormap": fading_colormap(get_method(self._method).colormap),
                "opacity": 1.0,
                "contrast": snap.contrast,
            }
            views.insert(0, ("map", snap.values, snap.map_factor, look))
        for role, data, factor, look in views:
            if defer and not self._has_layer(role) and not self._may_insert():
                self._pending = snap
                QTimer.singleShot(int(INSERT_GAP_S * 1000), self._show_pending)
                break
            self._swap(role, data, factor, snap.origin, **look)
            if role == "map" and self.first_tiles_s is None and snap.done:
                self.first_tiles_s = time.perf_counter() - self._started
        self.progress.max = max(1, snap.total)
        self.progress.value = min(snap.done, snap.total)
        self.status.value = format_progress(snap, snap.progress)

    def _show_pending(self):
        if self._pending is not None:
            self._show(self._pending)

    def _key(self, role) -> tuple:
        """This run's layer of ``role``: the tissue mask is the slide's, the rest the method's
        and the region's (a region run does not take over the whole slide's map)."""
        if role == "tissue":
            return (self._slide.unique_id, None, None, role)
        return (self._slide.unique_id, self._method, self._region, role)

    def _layer_name(self, role) -> str:
        slide = self._slide.name
        if role == "tissue":
            return f"{slide} · tissue"
        what = method_title(self._method)
        if self._region is not None:
            r, c, h, w = self._region
            what += f" · region x{c} y{r} {w}x{h} px"
        return f"{slide} · {what}" if role == "map" else f"{slide} · tiles done ({what})"

    def _bring_forward(self) -> None:
        """At a run's start: only this run's map and tiles shown over the slide (those of an
        earlier run with the same method and region, shown again), its name on the canvas."""
        self._hide_other_maps()
        for role in ("map", "tiles"):
            if self._has_layer(role):
                self._layers[self._key(role)].visible = True
        if self._has_layer("map"):
            self._show_notice(self._layers[self._key("map")])

    def _hide_other_maps(self) -> None:
        """Only this run's map (and tiles) shown over its slide: two maps' colours would mix.
        The others stay in the layer list, to show again with a click."""
        mine = {self._key("map"), self._key("tiles")}
        others = [
            layer
            for key, layer in self._layers.items()
            if key[0] == self._slide.unique_id and key not in mine and key[-1] != "tissue"
        ]
        for key, shown in self._nuclei.shown.items():  # a graph run's nuclei points too
            if key[0] == self._slide.unique_id and key[1:] != (self._method, self._region):
                others += [shown.points, shown.edges]
        for layer in others:
            if layer is not None and layer in self.viewer.layers:
                layer.visible = False

    def _has_layer(self, role) -> bool:
        layer = self._layers.get(self._key(role))
        return layer is not None and layer in self.viewer.layers

    def _may_insert(self) -> bool:
        return time.perf_counter() - self._inserted_at >= INSERT_GAP_S

    def _swap(self, role, data, factor, origin, *, colormap, opacity, contrast=(0.0, 1.0)):
        """Put ``data`` into this run's ``role`` layer (made on first use, then data swapped)."""
        slide = self._slide
        where = placement(factor, origin, tuple(slide.scale), tuple(slide.translate))
        layer = self._layers.get(self._key(role))
        if not self._has_layer(role):
            layer = self.viewer.add_image(
                data,
                name=self._layer_name(role),
                colormap=colormap,
                opacity=opacity,
                contrast_limits=contrast,
                blending="additive" if role == "tiles" else "translucent",
                metadata={SLIDE_KEY: {"role": role, "method": self._method}},
                units=tuple(getattr(slide, "units", ("pixel", "pixel")))[-2:],
                **where,
            )
            self._layers[self._key(role)] = layer
            self._inserted_at = time.perf_counter()
            if role == "map":
                self._show_notice(layer)
            self.viewer.layers.selection.active = slide
        else:
            layer.data = data
            if tuple(layer.scale) != where["scale"] or tuple(layer.translate) != where["translate"]:
                layer.scale, layer.translate = where["scale"], where["translate"]  # another region
            if tuple(layer.contrast_limits) != tuple(contrast):
                layer.contrast_limits = contrast

    def _show_notice(self, layer) -> None:
        """The map's name, whether its weights are synthetic demo weights, and the research-use
        line on the canvas, so that a screenshot of the slide carries them."""
        from histoview.viewer._notice import set_notice_titles

        tag = " [synthetic demo weights]" if self._synthetic else ""
        set_notice_titles(self.viewer, [layer.name + tag])

    def _tissue_toggled(self, _event=None):
        layer = self._layers.get(self._key("tissue")) if hasattr(self, "_slide") else None
        if layer is not None:
            layer.visible = bool(self.show_tissue.value)
