"""The compare view's side by side: one panel per explanation in napari's grid, made once.

napari's grid mode (``viewer.canvas.grid``) draws consecutive blocks of ``|stride|`` layers,
counted from the top of the layer list for a negative stride, each in its own view box under
one camera, so all panels pan and zoom together. Every panel is :data:`STRIDE` layers, bottom
to top:

* **tissue** - an Image layer sharing the image layer's data (the same array object, never a
  copy), named with the panel's title; napari's layer-name overlay draws that title, wrapped
  on up to three lines, in the margin above the tissue;
* **main** - the explanation's overlay, its values min-max normalised to [0, 1] with the
  method's colour bar in the margin right of the tissue (:func:`fit_panels`);
* **companion** - the explanation's second layer where it has one (a nuclei graph's edges,
  under the nuclei), else the compare view's **threshold outline** over the map: the
  border of the region at or above the threshold (DT Grad-CAM's own threshold, or the one
  set with the slider), empty while no threshold is set. A nuclei explanation's further
  layers (outlines) leave the panel and are hidden while side by side.

napari's grid needs every block to hold the same number of layers; the companion is what
lets a heatmap's panel (one overlay layer) and a nuclei graph's panel (nuclei and edges)
both hold three without placeholder layers.

The panel layers are made once per explanation and kept (hidden while stacked), so that
switching only changes visibility, colour limits, overlays and the grid, all in one
``LayerList.batched_update`` (napari then rebuilds its scene once, :func:`one_scene_update`).
They are hidden from napari's layer list (:func:`hide_rows`): the list shows the user's
layers only.
"""

from __future__ import annotations

import contextlib
import gc
import textwrap
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

from histoview.viewer._compare_parts import STATE_KEY, role
from histoview.viewer._layer_updates import unproxied
from histoview.viewer._napari_rows import SILENT_EVENTS

#: layers per panel: tissue, companion, main overlay
STRIDE = 3
#: roles of the layers the compare view makes (layer.metadata[STATE_KEY]["role"])
PANEL_ROLES = ("tissue", "outline")
#: title font (points), colour bar size (pixels) and the margins they take (canvas pixels)
TITLE_FONT_SIZE = 9
TITLE_LINE_PX = 15
COLORBAR_SIZE = (10, 100)
COLORBAR_MARGIN_PX = 62
#: the threshold outline's colour, and the longer side of its raster (pixels)
OUTLINE_COLOR = (0.2, 1.0, 1.0, 1.0)
OUTLINE_MAX_SIDE = 240


def main_of(layer):
    """``unique_id`` of the explanation layer a panel layer belongs to (None otherwise)."""
    return (layer.metadata.get(STATE_KEY) or {}).get("main")


# -- titles -----------------------------------------------------------------------------------
def panel_title(name: str, width: int = 44) -> str:
    """A panel title from an explanation layer's name: the method (and its setting), the
    prediction, then the bracketed notes, each wrapped at ``width`` characters, e.g.
    ``"A-MIL attention\\nin_situ (> 0.99)\\nsynthetic demo weights"``."""
    head, _, rest = name.partition(": ")
    notes = []
    while rest.endswith("]") and "[" in rest:
        rest, _, note = rest.rpartition("[")
        notes.insert(0, note[:-1])
        rest = rest.rstrip()
    copies = [n for n in notes if n.isdigit()]  # napari's " [1]" for a repeated name
    notes = [n for n in notes if not n.isdigit()]
    head += "".join(f" [{n}]" for n in copies)
    lines = [head, rest] + ([" · ".join(notes)] if notes else [])
    wrapped = [part for line in lines if line for part in textwrap.wrap(line, width)]
    return "\n".join(wrapped)


def title_lines(layers: Iterable) -> int:
    """The most lines a tissue layer's title has."""
    return max((lay.name.count("\n") + 1 for lay in layers), default=1)


# -- the layers a panel adds ------------------------------------------------------------------
def tissue_layer(base, main):
    """The panel's tissue: an Image layer over ``base``'s data (no copy), hidden, titled."""
    from napari.layers import Image

    kw = (
        {"rgb": True}
        if base.rgb
        else {"colormap": base.colormap.name, "contrast_limits": base.contrast_limits}
    )
    layer = Image(
        base.data,
        name=panel_title(main.name),
        scale=base.scale,
        translate=base.translate,
        units=base.units,
        multiscale=base.multiscale,
        visible=False,
        metadata={STATE_KEY: {"role": "tissue", "main": main.unique_id}},
        **kw,
    )
    title = layer.name_overlay  # shown while side by side
    title.font_size, title.color = TITLE_FONT_SIZE, "white"
    title.box = False  # napari sizes the box of multi-line text wider than the text
    return layer


def outline_layer(main, base):
    """The panel's threshold outline of ``main``'s map over ``base`` (hidden; empty without
    a threshold)."""
    from napari.layers import Image
    from napari.utils.colormaps import Colormap

    expl = main.metadata["histoview_explanation"]
    data, scale, translate = outline_data(expl, threshold_of(main), base)
    cmap = Colormap(colors=[OUTLINE_COLOR, OUTLINE_COLOR], name="threshold outline")
    return Image(
        data,
        name=f"{main.name}: threshold outline",
        colormap=cmap,
        contrast_limits=(0.0, 1.0),
        scale=scale,
        translate=translate,
        units=base.units,
        visible=False,
        blending="translucent",
        metadata={STATE_KEY: {"role": "outline", "main": main.unique_id}},
    )


def threshold_of(main) -> float | None:
    from histoview.viewer._compare_parts import state

    return state(main).get("threshold")


def outline_data(expl, threshold: float | None, base):
    """``(data, scale, translate)`` of a threshold outline over the image layer ``base``: 1 on
    the border of the region whose normalised value is >= ``threshold``, NaN (transparent)
    elsewhere, on a raster of the image at most :data:`OUTLINE_MAX_SIDE` pixels long."""
    from scipy.ndimage import binary_erosion

    from histoview.explain.agreement import normalise
    from histoview.viewer._compare_parts import base_shape

    H, W = expl.image_shape
    f = min(1.0, OUTLINE_MAX_SIDE / max(H, W))
    shape = (max(1, round(H * f)), max(1, round(W * f)))
    out = np.full(shape, np.nan, np.float32)
    if threshold is not None and threshold > 0:
        norm = normalise(np.asarray(expl.values, np.float32))
        dense = expl.geometry.rasterize(norm, fill=np.nan, shape=shape)
        region = np.isfinite(dense) & (dense >= threshold - 1e-6)
        out[region & ~binary_erosion(region, border_value=0)] = 1.0
    s = np.asarray(base.scale[-2:], float)
    t = np.asarray(base.translate[-2:], float)
    cell = np.asarray(base_shape(base), float) / np.asarray(shape, float)
    return out, tuple(s * cell), tuple(t + s * (cell - 1) / 2)


# -- switching --------------------------------------------------------------------------------
@contextmanager
def one_scene_update(layers, view=None, *, batch: bool = True):
    """Every change inside as one napari scene update (``LayerList.batched_update``).

    napari ends a batch with a full garbage collection (``gc.collect``), which walks the
    whole heap - about 0.8 s with torch and napari loaded on a 2-core CPU. The objects that
    exist when the batch starts are frozen (``gc.freeze``) for its duration, so that
    collection only looks at what the batch made; they are unfrozen afterwards and
    collected as usual later. ``batch=False``: no batch (napari rebuilds its whole scene at
    the end of every batch, so changes that do not touch layer visibility or order are
    cheaper without one).

    With napari's layer list ``view`` (:func:`layer_list_view`) its model hears none of the
    layers' events inside (each visibility, data or colour change would otherwise update
    its row through the list's sorting proxy, one at a time, and repaint the list); it is
    told at the end which rows changed, once.
    """
    frozen_before = gc.get_freeze_count()
    if batch:
        gc.freeze()
    model = _layer_list_model(view)
    events = getattr(unproxied(layers), "events", None)
    touched: set = set()

    def collect(event) -> None:
        index, kind = getattr(event, "index", None), getattr(event, "type", None)
        if kind in SILENT_EVENTS:  # nothing a row shows changed
            return
        if kind in ("moved", "reordered", "inserted", "removed"):
            touched.add(None)  # rows moved: all of them
        elif isinstance(index, int):
            touched.add(index)

    quiet = contextlib.ExitStack()
    if model is not None and events is not None:
        quiet.enter_context(events.blocker(model._process_event))
        events.connect(collect)
        quiet.callback(events.disconnect, collect)
    try:
        with quiet, layers.batched_update() if batch else contextlib.nullcontext():
            yield
    finally:
        if batch and not frozen_before:
            gc.unfreeze()
        if model is not None and touched:
            _rows_changed(model, touched)


def _rows_changed(model, rows: set) -> None:
    """Tell napari's layer list model that ``rows`` (source rows; None: all) changed."""
    n = model.rowCount()
    if not n:
        return
    spans = [(0, n - 1)] if None in rows else [(r, r) for r in sorted(rows) if 0 <= r < n]
    for first, last in spans:
        model.dataChanged.emit(model.index(first, 0), model.index(last, 0), [])


def _layer_list_model(view):
    """napari's layer list model behind ``view`` (its sorting proxy's source), or None."""
    if view is None:
        return None
    model = view.model()
    source = model.sourceModel() if hasattr(model, "sourceModel") else model
    return source if hasattr(source, "_process_event") else None


def panel_order(layers, panels: list[list], extras: list) -> list:
    """The layer list (bottom to top) that puts each panel in one grid block: every other
    layer at the bottom in its order, then ``extras``, then the panels."""
    in_panels = {lay.unique_id for p in panels for lay in p} | {lay.unique_id for lay in extras}
    rest = [lay for lay in layers if lay.unique_id not in in_panels]
    return rest + list(extras) + [lay for p in panels for lay in p]


def margins(lines: int) -> tuple[float, float]:
    """Canvas pixels a panel keeps free: above the tissue for a title of ``lines`` lines,
    right of it for the colour bar."""
    return lines * TITLE_LINE_PX + 14, COLORBAR_MARGIN_PX


def fit_panels(viewer, base, lines: int) -> None:
    """Fit the tissue in every panel, leaving room for the title above it and the colour
    bar to its right (canvas pixels), so neither covers the tissue; where the panel is wider
    than needed the tissue moves right, next to its colour bar, and where it is taller, the
    tissue is centred on the bar's height."""
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    vb_h, vb_w = (float(v) for v in viewer.canvas.viewbox_size(viewer.layers))
    top, right = margins(lines)
    (y0, x0), (y1, x1) = np.asarray(base.extent.world, float)[:, -2:]
    h, w = max(y1 - y0, 1e-9), max(x1 - x0, 1e-9)
    if vb_h <= top + 20 or vb_w <= right + 20:
        viewer.reset_view()
        return
    zoom = 0.97 * min((vb_h - top) / h, (vb_w - right) / w)
    tissue_top = max(top, (vb_h - h * zoom) / 2)  # canvas pixels from the panel's top
    tissue_left = max(4.0, vb_w - right - w * zoom)
    camera.zoom = zoom
    camera.center = (
        (y0 + y1) / 2 + (vb_h / 2 - (tissue_top + h * zoom / 2)) / zoom,
        (x0 + x1) / 2 + (vb_w / 2 - (tissue_left + w * zoom / 2)) / zoom,
    )


def style_colorbar(bar) -> None:
    """A panel's colour bar: small, in the margin right of the tissue, on a dark box."""
    if bar is None:
        return
    bar.position, bar.size, bar.font_size = "middle_right", COLORBAR_SIZE, 8
    bar.box, bar.box_color = True, (0.0, 0.0, 0.0, 0.5)


# -- napari's layer list ----------------------------------------------------------------------
def layer_list_view(widget):
    """napari's layer list (a Qt list view of the window ``widget`` is docked in), or None.

    napari's own when its viewer has made one; else found in the window once per widget and
    remembered (searching the window's widgets takes 25-110 ms here)."""
    from qtpy.QtWidgets import QListView

    cached = getattr(widget, "_histoview_layer_list", None)
    if cached is not None:
        try:
            if cached.window() is widget.window():
                return cached
        except RuntimeError:  # the Qt object is gone
            pass
    view = _viewer_layer_list(getattr(widget, "viewer", None))
    if view is None:  # another napari layout: search the window (~25-110 ms here)
        window = widget.window() if widget is not None else None
        if window is None or window is widget:
            return None
        found = [v for v in window.findChildren(QListView) if type(v).__name__ == "QtLayerList"]
        view = found[0] if found else None
    if view is not None:
        widget._histoview_layer_list = view
    return view


def _viewer_layer_list(viewer):
    """The layer list view napari 0.9's Qt viewer made for ``viewer`` (its private
    ``_qt_viewer._layers``, not created here; behind the plugin proxy), or None."""
    try:
        view = unproxied(viewer).window._qt_viewer._layers
    except (AttributeError, RuntimeError):
        return None
    return view if type(view).__name__ == "QtLayerList" else None


def hide_rows(view, layers) -> int:
    """Hide the compare view's panel layers from napari's layer list view; returns how many
    rows are hidden. The view shows the layers in reverse order through a proxy model."""
    if view is None:
        return 0
    model = view.model()
    source = model.sourceModel() if hasattr(model, "sourceModel") else model
    hidden = 0
    for i, lay in enumerate(layers):
        helper = role(lay) in PANEL_ROLES
        index = source.index(i, 0)
        row = model.mapFromSource(index).row() if model is not source else index.row()
        if row >= 0:
            if view.isRowHidden(row) != helper:
                view.setRowHidden(row, helper)
            hidden += helper
    return hidden
