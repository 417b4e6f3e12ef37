"""Putting prepared overlays into the viewer with as little main-thread work as napari allows.

* :func:`insert_layers_stepwise` - ready layers (built in a worker,
  :func:`histoview.viewer.overlays.build_layers`) inserted one per turn of the event loop,
  none made the active layer on insertion (napari would rebuild the layer controls for
  each), the overlay selected once at the end.
* :func:`layers_of_run` / :func:`swap_layer_data` - an explanation made again with the same
  settings on the same image (:func:`histoview.viewer.overlays.run_key`) keeps its layers:
  their data are swapped, nothing is inserted.
* :func:`show_overlay` - either of the two, for the docks; the run shown alone.
* :func:`show_run_alone` - one run's layers shown, every other run's hidden (still in the
  layer list, their eyes and the overlay shortcuts bring them back): overlays stacked on
  one another hide the tissue and each other, and every shown layer is drawn at each frame
  (ten stacked maps cost a software-OpenGL frame about 130 ms, one about 60 ms).
"""

from __future__ import annotations

import contextlib

import numpy as np

#: metadata key of the compare view's record of a layer (its panel layers' role, an
#: overlay's raw values and threshold; :mod:`histoview.viewer._compare_parts`)
STATE_KEY = "histoview_compare"


def role(layer) -> str | None:
    """``"tissue"`` / ``"outline"`` for the panel layers the compare view adds, else None."""
    return (layer.metadata.get(STATE_KEY) or {}).get("role")


def _key_of(layer_data: list[tuple]) -> str | None:
    for _, kwargs, _ in layer_data:
        key = ((kwargs.get("metadata") or {}).get("histoview") or {}).get("run_key")
        if key:
            return key
    return None


def layers_of_run(viewer, layer_data: list[tuple]) -> list:
    """The layers of ``viewer`` an earlier run with the same :func:`run_key` drew (bottom to
    top; compare-view panel layers left out), or []."""
    key = _key_of(layer_data)
    if key is None:
        return []
    return [
        lay
        for lay in viewer.layers
        if ((lay.metadata.get("histoview") or {}).get("run_key")) == key and role(lay) is None
    ]


def swap_layer_data(layers: list, layer_data: list[tuple]) -> bool:
    """Give ``layers`` (an earlier run's, :func:`layers_of_run`) the data of ``layer_data``
    (the same kinds in the same order) instead of adding new layers; False (nothing changed)
    when they do not correspond. The user's visibility, opacity and order are kept; values
    that are the same (as the same settings give) leave the layer's data alone."""
    kinds = [type(lay).__name__.lower() for lay in layers]
    if kinds != [kind for *_, kind in layer_data]:
        return False
    for lay, (data, kwargs, kind) in zip(layers, layer_data):
        same = _same_values(lay, data, kwargs)
        if not same:
            _set_layer_data(lay, data, kwargs, kind)
        if "metadata" in kwargs:
            keep = (
                {}
                if not same
                else {k: v for k, v in lay.metadata.items() if k not in kwargs["metadata"]}
            )
            lay.metadata = {**keep, **kwargs["metadata"]}
        lay.name = kwargs["name"]
    return True


def _same_values(lay, data, kwargs: dict) -> bool:
    """Whether ``lay`` shows what ``(data, kwargs)`` would: the same explanation values, or
    (edges, outlines) the same data."""
    old = lay.metadata.get("histoview_explanation")
    new = (kwargs.get("metadata") or {}).get("histoview_explanation")
    if old is not None and new is not None:
        return np.array_equal(np.asarray(old.values), np.asarray(new.values), equal_nan=True)
    if isinstance(data, np.ndarray):
        current = np.asarray(lay.data)
        return current.shape == data.shape and np.array_equal(current, data, equal_nan=True)
    current = lay.data
    return len(current) == len(data) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(current, data)
    )


def _set_layer_data(lay, data, kwargs: dict, kind: str) -> None:
    """New data (and what is derived from it) for one existing layer."""
    lay.metadata.pop(STATE_KEY, None)  # the compare view's record of the old values
    if kind == "image":
        lay.data = data
        lay.contrast_limits = kwargs["contrast_limits"]
    elif kind == "points":
        lay.data = data
        lay.features = kwargs["features"]
        lay.face_color = kwargs["face_color"]
        lay.face_contrast_limits = kwargs["face_contrast_limits"]
        lay.size = kwargs["size"]
    elif kind == "vectors":
        lay.data = data
        lay.features = kwargs["features"]
        lay.edge_color = kwargs["edge_color"]
    else:  # shapes: the outlines
        lay.data = data


def unproxied(obj):
    """The object behind napari's ``PublicOnlyProxy`` (what plugin widgets are handed)."""
    inner = getattr(obj, "__wrapped__", None)
    while inner is not None and inner is not obj:
        obj, inner = inner, getattr(inner, "__wrapped__", None)
    return obj


def _scene_canvas(viewer):
    """vispy's canvas behind ``viewer`` (None without a window, or on another napari)."""
    window = getattr(unproxied(viewer), "window", None)
    canvas = getattr(getattr(window, "_qt_viewer", None), "canvas", None)
    scene = getattr(canvas, "_scene_canvas", None)
    return scene if hasattr(scene, "_update_pending") else None


@contextlib.contextmanager
def no_redraw(viewer):
    """Nothing done inside asks vispy for a redraw of the canvas.

    For changes that show nothing new, such as inserting a hidden layer: napari asks for a
    redraw of the whole scene on every insertion (it updates every layer's node), which under
    software OpenGL costs a draw of ~0.1-0.2 s per hidden layer. vispy asks Qt for a repaint
    only when none is pending (``SceneCanvas._update_pending``); marked pending inside, the
    requests are dropped. A repaint that was pending before stays pending.
    """
    scene = _scene_canvas(viewer)
    if scene is None or scene._update_pending:
        yield
        return
    scene._update_pending = True
    try:
        yield
    finally:
        scene._update_pending = False


def insert_inactive(viewer, index: int, layer) -> None:
    """Insert ``layer`` at ``index`` without making it the active layer (napari would
    otherwise switch the layer controls to it, once per layer); a hidden layer without
    redrawing the canvas (:func:`no_redraw`)."""
    layers = unproxied(viewer.layers)
    hidden = not layer.visible
    before = getattr(layers, "_activate_on_insert", None)
    with no_redraw(viewer) if hidden else contextlib.nullcontext():
        if before is None:  # another napari: insert as usual
            viewer.layers.insert(index, layer)
        else:
            layers._activate_on_insert = False
            try:
                layers.insert(index, layer)
            finally:
                layers._activate_on_insert = before
    scene = _scene_canvas(viewer) if hidden and layer.visible else None
    if scene is not None:  # shown while it was inserted: draw it after all
        scene.update()


def append_inactive(viewer, layer) -> None:
    """Append ``layer`` without making it the active layer (:func:`insert_inactive`)."""
    insert_inactive(viewer, len(viewer.layers), layer)


def insert_layers_stepwise(viewer, layers: list, done=None, schedule=None, select=None) -> None:
    """Insert ``layers`` into ``viewer`` one per turn of the event loop (napari builds each
    layer's canvas visual and controls on insertion), none made active; then, in a turn of
    its own, make ``select`` (default: the last layer) the active one and call
    ``done(layers)``. ``schedule(fn)`` runs ``fn`` in a later turn (default: a 0 ms timer)."""
    if schedule is None:
        from qtpy.QtCore import QTimer

        def schedule(fn):
            QTimer.singleShot(0, fn)

    pending = list(layers)
    target = select if select is not None else (layers[-1] if layers else None)

    def step():
        if pending:
            append_inactive(viewer, pending.pop(0))
            schedule(step)
            return
        if target is not None and target in viewer.layers:
            viewer.layers.selection.active = target
        if done is not None:
            done(layers)

    step()


#: metadata key under which a run's extra layer (graph edges, outlines) keeps whether it
#: was shown while its run is hidden (:func:`show_run_alone`)
SHOWN_KEY = "histoview_shown_with_run"


def run_key_of(layer) -> str | None:
    """The run an explanation's layer belongs to (:func:`histoview.viewer.overlays.run_key`);
    None for other layers and the compare view's panel layers."""
    if role(layer) is not None:
        return None
    return (layer.metadata.get("histoview") or {}).get("run_key")


def show_run_alone(viewer, key: str | None) -> None:
    """Show the run ``key``'s layers and hide every other run's (the base images and other
    layers stay as they are). A run's extra layers (graph edges, outlines) come back as they
    were when it was hidden; its main layer is shown. Side by side (napari's grid on) the
    compare view decides what is shown: nothing changes."""
    from histoview.viewer._compat import grid_of

    if getattr(grid_of(viewer), "enabled", False):
        return
    for lay in list(viewer.layers):
        other = run_key_of(lay)
        if other is None:
            continue
        main = "histoview_explanation" in lay.metadata
        if other != key:
            if not main and lay.visible:
                lay.metadata[SHOWN_KEY] = True
            lay.visible = False
        elif main:
            lay.visible = True
        elif SHOWN_KEY in lay.metadata:
            lay.visible = bool(lay.metadata.pop(SHOWN_KEY))


def show_overlay(viewer, layer_data: list[tuple], layers: list, done=None, schedule=None) -> None:
    """Show a prepared overlay alone (:func:`show_run_alone`): swap the data of an earlier
    run's layers with the same :func:`run_key` (:func:`swap_layer_data`), else insert
    ``layers`` (built from ``layer_data`` by :func:`build_layers`) stepwise; then
    ``done(the layers shown)``."""
    show_run_alone(viewer, _key_of(layer_data))  # one redraw, with the first step's
    existing = layers_of_run(viewer, layer_data)
    if existing and swap_layer_data(existing, layer_data):
        if done is not None:
            done(existing)
        return
    main = next((lay for lay in layers if "histoview_explanation" in lay.metadata), None)
    insert_layers_stepwise(viewer, layers, done, schedule=schedule, select=main)
