"""An explain dock's Explain on a whole slide: handed to the Whole slide dock.

An explain dock explains an image in one piece. A pyramidal slide does not fit in one piece at
a model's magnification (a 40X slide is 100,000+ pixels across), and reading a coarse pyramid
level instead would explain it far below the magnification the model was trained at. So when
the image is a slide the Whole slide dock can run (a file histoview reads, shown as a
multiscale layer, or one whose size at the model's pixel size is over what one read allows:
:data:`histoview.io.image.MAX_LEVEL_PIXELS`) and the method has a slide processor,
Explain opens (or reuses) the Whole slide dock and starts it there with the same slide,
method, model, target class and options; the map appears at once and fills in tile by tile
while the user keeps panning. A single image keeps the one-piece path.

Scope (:func:`choose_scope`): what the user points at. A rectangle (or polygon) drawn over the
slide in the selected Shapes layer is explained alone: the user drew it to ask about that
region. Otherwise, what the user looks at: when the view shows less than
:data:`VIEW_FRACTION` of the slide (zoomed in on a part), only the current view is explained:
that is the region the pathologist is asking about, and it is done in a fraction of the time.
Otherwise the whole slide is: a view showing most of the slide would leave strips at its
edges unexplained for little time saved. The scope stays visible (and changeable) in the Whole
slide dock for the next run.

"Explain (all methods)" hands over the method it has selected: a whole slide is explained one
method at a time (each is minutes to hours of compute and writes its own outputs), so the
result line says how to add the next one.
"""

from __future__ import annotations

from histoview.explain.methods import get_method, method_title

#: below this fraction of the slide's area in view, the current view is explained
VIEW_FRACTION = 0.5


def wants_slide_dock(layer, method: str, entry=None) -> bool:
    """Whether Explain on ``layer`` with ``method`` (model ``entry``, None: not known yet)
    goes to the Whole slide dock (module docstring)."""
    from histoview.viewer._slide_widget import is_slide_layer, slide_methods

    if layer is None or not is_slide_layer(layer) or method not in slide_methods():
        return False
    return bool(layer.multiscale) or _too_big(layer, entry)


def _too_big(layer, entry) -> bool:
    """Whether the layer's image at the model's pixel size has more pixels than one read
    allows (a slide of unknown pixel size: at its own)."""
    from histoview.io.image import MAX_LEVEL_PIXELS

    h, w = layer.data.shape[:2]
    mpp = (layer.metadata.get("histoview") or {}).get("pixel_size_um")
    target = (getattr(entry, "meta", None) or {}).get("pixel_size_um")
    scale = (float(mpp) / float(target)) ** 2 if mpp and target else 1.0
    return h * w * scale > MAX_LEVEL_PIXELS


def choose_scope(viewer, layer) -> str:
    """The Whole slide dock's scope for ``layer``: ``"drawn rectangle"`` when the selected
    layer is a Shapes layer whose last rectangle or polygon overlaps the slide, else
    ``"current view"`` when the canvas shows under :data:`VIEW_FRACTION` of the slide, else
    ``"whole slide"`` (module docstring)."""
    from histoview.viewer._nuclei_layers import view_box
    from histoview.viewer._slide_live import world_box_to_region

    shape0 = layer.level_shapes[0] if layer.multiscale else layer.data.shape
    drawn = _selected_drawing(viewer)
    if drawn is not None and (
        world_box_to_region(drawn, tuple(layer.scale), tuple(layer.translate), shape0[:2])
        is not None
    ):
        return "drawn rectangle"
    region = world_box_to_region(
        view_box(viewer), tuple(layer.scale), tuple(layer.translate), shape0[:2]
    )
    if region is None:  # the view is off the slide: the slide, not nothing
        return "whole slide"
    shown = region[2] * region[3] / (float(shape0[0]) * float(shape0[1]))
    return "current view" if shown < VIEW_FRACTION else "whole slide"


def _selected_drawing(viewer):
    """The world box ((y0, x0), (y1, x1)) of the last rectangle or polygon in the selected
    layer when that is a Shapes layer; None otherwise."""
    from napari.layers import Shapes

    shapes = viewer.layers.selection.active
    if not isinstance(shapes, Shapes):
        return None
    for data, kind in zip(reversed(shapes.data), reversed(shapes.shape_type)):
        if kind in ("rectangle", "polygon") and len(data):
            pts = [shapes.data_to_world(p)[-2:] for p in data]
            ys, xs = [float(p[0]) for p in pts], [float(p[1]) for p in pts]
            return ((min(ys), min(xs)), (max(ys), max(xs)))
    return None


def hand_over(
    viewer,
    layer,
    method,
    entry=None,
    target_class=None,
    importance=None,
    all_methods=False,
    report_to=None,
) -> str:
    """Start the Whole slide dock on ``layer`` with ``method`` and model ``entry`` (None: the
    dock's default); returns the line for the explain dock's result (also when the Whole
    slide dock is busy or reported an error: it says so; raises ValueError when ``layer`` is
    not a slide that dock offers). ``report_to`` (the explain dock's result widget) is told
    the Whole slide dock's closing status line when the run ends."""
    dock_widget, dock = viewer.window.add_plugin_dock_widget("histoview", "Whole slide")
    dock_widget.show()
    dock_widget.raise_()
    if dock.busy:
        return (
            "the Whole slide dock is still explaining a slide: press Explain again when it has "
            "finished, or cancel it there"
        )
    scope = choose_scope(viewer, layer)
    dock.start(
        layer,
        method,
        entry.path if entry is not None else None,
        scope,
        target_class=target_class,
        options={"importance": importance}
        if importance in get_method(method).options.get("importance", ())
        else None,
        on_finish=None if report_to is None else lambda status: _tell(report_to, status),
    )
    if dock.status.value.startswith("error"):  # the dock has shown the message
        return f"the Whole slide dock could not start: {dock.status.value[len('error: ') :]}"
    text = (
        f"{layer.name} is a whole slide: it is explained tile by tile at the model's "
        f"magnification in the Whole slide dock ({method_title(method)}, {scope}); the map "
        "fills in there as tiles finish, and you can keep panning."
    )
    if all_methods:
        text += (
            " Whole slides are explained one method at a time: choose the next method here "
            "and press Explain again when this one has finished."
        )
    return text


def _tell(widget, status: str) -> None:
    """Set the explain dock's result line to how the handed-over run ended."""
    try:
        widget.value = f"Whole slide dock: {status}"
    except RuntimeError:  # the explain dock was closed meanwhile (its Qt widget is gone)
        pass
