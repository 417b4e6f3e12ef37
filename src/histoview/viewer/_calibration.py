"""A pixel size typed in a dock puts the image in micrometres, with what is drawn over it.

A BreakHis PNG or a screenshot carries no pixel size: napari shows it in pixels, without a
scale bar. When the user types one (the explain dock's "pixel size" box),
:func:`set_pixel_size` gives the image layer that scale in µm, and every layer drawn over it
(explanations and their edges and outlines, the compare view's panel layers, stain
normalised regions) the same change of scale, so that they stay where they were on the
tissue; the scale bar turns on and the view fits the image again. Forgetting the value (0)
brings the scale and units the file gave back.
"""

from __future__ import annotations

import numpy as np

#: where the scale and units an image had before a typed pixel size are kept (layer metadata)
ORIGINAL_KEY = "histoview_original_scale"

#: metadata keys of layers drawn over another layer, and where they name it
_STAIN_KEY = "histoview_stain"  # histoview.viewer._stain_view.STAIN_KEY: {"source": name}


def _over(layer) -> str | None:
    """The name of the image layer an explanation or stain layer was drawn over."""
    info = layer.metadata.get("histoview") or {}
    name = (info.get("explanation") or {}).get("image_layer")
    if name is None:
        name = (layer.metadata.get(_STAIN_KEY) or {}).get("source")
    return name


#: how a companion's name starts after the name of the image it belongs to: the samples'
#: ground truth ("<image>: lesions (ground truth)"), the slide dock's maps, tiles and nuclei
#: ("<slide> · A-MIL attention")
_COMPANION_SEPARATORS = (": ", " · ")


def _drawn_on(layer, base, *, by_name: bool) -> bool:
    """Whether ``layer`` was drawn over ``base``: it names it (explanations, stain regions),
    is a compare panel of a layer over it, or (``by_name``: ``base`` is the image itself)
    carries its name as a companion's prefix, names no other image and is no opened file."""
    from histoview.viewer._layer_updates import STATE_KEY

    over = _over(layer)
    if over == base.name:
        return True
    if (layer.metadata.get(STATE_KEY) or {}).get("main") == base.unique_id:
        return True
    if not by_name or over is not None or "path" in (layer.metadata.get("histoview") or {}):
        return False  # e.g. "a.png: crop" opened from a file is an image of its own
    return any(str(layer.name).startswith(base.name + sep) for sep in _COMPANION_SEPARATORS)


def layers_over(viewer, image_layer) -> list:
    """The layers drawn over ``image_layer``, and over those in turn (an explanation of a
    stain-normalised region): explanations with their edges and outlines, the compare view's
    panel layers, stain-normalised regions, the samples' ground truth and the slide dock's
    maps, tiles and nuclei."""
    found, bases = [], [image_layer]
    while bases:
        base = bases.pop()
        for lay in viewer.layers:
            if lay is image_layer or lay in found:
                continue
            # by name only from the image: an explanation's name ("Grad-CAM: benign (1.00)")
            # would otherwise claim another image's "Grad-CAM: benign (1.00): outlines [1]"
            if _drawn_on(lay, base, by_name=base is image_layer):
                found.append(lay)
                bases.append(lay)
    return found


def _rescale(layer, factor: np.ndarray, units) -> None:
    """``layer`` drawn ``factor`` (per axis, y and x) times as large in the world, in ``units``."""
    scale = np.asarray(layer.scale, float).copy()
    translate = np.asarray(layer.translate, float).copy()
    scale[-2:] *= factor
    translate[-2:] *= factor
    layer.scale, layer.translate = scale, translate
    layer.units = (*tuple(layer.units)[:-2], *units)


def follow_base(viewer, layers: list) -> None:
    """Layers a run prepared for its image's scale at the start (the worker's ``where``),
    rescaled like the image when a pixel size was typed meanwhile, so that they land on the
    tissue (the main thread calls this just before inserting them)."""
    moves = []
    for layer in layers:
        info = layer.metadata.get("histoview") or {}
        name = _over(layer)
        if info.get("base_scale") is None or name not in viewer.layers:
            continue
        base = viewer.layers[name]
        now = np.abs(np.asarray(base.scale[-2:], float))
        factor = now / np.abs(np.asarray(info["base_scale"], float))
        if not np.allclose(factor, 1.0):
            moves.append((layer, factor, tuple(str(u) for u in base.units[-2:]), now))
    for layer, factor, units, now in moves:  # companions may share one metadata dict
        _rescale(layer, factor, units)
        info = {**layer.metadata["histoview"], "base_scale": [float(v) for v in now]}
        layer.metadata = {**layer.metadata, "histoview": info}


def set_pixel_size(viewer, image_layer, um: float | None) -> None:
    """``image_layer`` at ``um`` µm per pixel (``None``: the scale and units it had before the
    first typed value), and every layer over it (:func:`layers_over`) alike; the scale bar
    follows and the view fits again (side by side: every panel, beside title and colour bar)."""
    from histoview.viewer._scale_bar import (
        MICROMETRE_UNITS,
        calibrated,
        in_micrometres,
        scale_bar,
        update_scale_bar,
    )

    meta = image_layer.metadata
    original = meta.get(ORIGINAL_KEY)
    if um is not None and um > 0:
        if original is None:
            original = {
                "scale": [float(v) for v in image_layer.scale[-2:]],
                "units": [str(u) for u in image_layer.units[-2:]],
            }
        target, units = np.array([um, um], float), ("um", "um")
    elif original is not None:
        target, units = np.asarray(original["scale"], float), tuple(original["units"])
    else:
        return  # nothing typed before: the file's scale stands
    current = np.abs(np.asarray(image_layer.scale[-2:], float))
    factor = np.abs(target) / current
    same_units = in_micrometres(image_layer) == (units[-1] in MICROMETRE_UNITS)
    if np.allclose(factor, 1.0) and same_units:
        if um is None:  # the file's scale again: nothing to bring back
            image_layer.metadata = {k: v for k, v in meta.items() if k != ORIGINAL_KEY}
        return
    for layer in [image_layer, *layers_over(viewer, image_layer)]:
        _rescale(layer, factor, units)
    meta = {k: v for k, v in image_layer.metadata.items() if k != ORIGINAL_KEY}
    if um is not None and um > 0:  # kept only once the layers are rescaled
        meta[ORIGINAL_KEY] = original
    image_layer.metadata = meta
    update_scale_bar(viewer)
    if not calibrated(viewer):
        scale_bar(viewer).visible = False  # back in pixels everywhere: a bar in px says nothing
    _fit(viewer, image_layer)


def _fit(viewer, image_layer) -> None:
    """The view fitted again: the whole scene, or, side by side, every panel's tissue beside
    its title and colour bar (:func:`histoview.viewer._compare_panels.fit_panels`)."""
    from histoview.viewer._compat import grid_of

    if not grid_of(viewer).enabled:
        viewer.reset_view()
        return
    from histoview.viewer import _compare_panels as panels
    from histoview.viewer._layer_updates import role

    titles = [lay for lay in viewer.layers if lay.visible and role(lay) == "tissue"]
    panels.fit_panels(viewer, image_layer, panels.title_lines(titles))
