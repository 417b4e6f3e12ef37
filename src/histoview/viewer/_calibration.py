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


def layers_over(viewer, image_layer) -> list:
    """The layers drawn over ``image_layer``: explanations with their companions, the compare
    view's panel layers of those explanations, and stain-normalised regions of it."""
    from histoview.viewer._layer_updates import STATE_KEY

    drawn = [
        lay for lay in viewer.layers if lay is not image_layer and _over(lay) == image_layer.name
    ]
    ids = {lay.unique_id for lay in drawn}
    panels = [
        lay
        for lay in viewer.layers
        if lay not in drawn and (lay.metadata.get(STATE_KEY) or {}).get("main") in ids
    ]
    return drawn + panels


def _rescale(layer, factor: np.ndarray, units) -> None:
    """``layer`` drawn ``factor`` (per axis, y and x) times as large in the world, in ``units``."""
    scale = np.asarray(layer.scale, float).copy()
    translate = np.asarray(layer.translate, float).copy()
    scale[-2:] *= factor
    translate[-2:] *= factor
    layer.scale, layer.translate = scale, translate
    layer.units = (*tuple(layer.units)[:-2], *units)


def set_pixel_size(viewer, image_layer, um: float | None) -> None:
    """``image_layer`` at ``um`` µm per pixel (``None``: the scale and units it had before the
    first typed value), and every layer over it (:func:`layers_over`) alike; the scale bar
    follows and the view fits again."""
    from histoview.viewer._scale_bar import scale_bar, update_scale_bar

    meta = image_layer.metadata
    original = meta.get(ORIGINAL_KEY)
    if um is not None and um > 0:
        if original is None:
            original = {
                "scale": [float(v) for v in image_layer.scale[-2:]],
                "units": [str(u) for u in image_layer.units[-2:]],
            }
            image_layer.metadata = {**meta, ORIGINAL_KEY: original}
        target, units = np.array([um, um], float), ("um", "um")
    elif original is not None:
        target, units = np.asarray(original["scale"], float), tuple(original["units"])
        image_layer.metadata = {k: v for k, v in meta.items() if k != ORIGINAL_KEY}
    else:
        return  # nothing typed before: the file's scale stands
    current = np.abs(np.asarray(image_layer.scale[-2:], float))
    factor = np.abs(target) / current
    if np.allclose(factor, 1.0) and tuple(str(u) for u in image_layer.units[-2:]) == units:
        return
    for layer in [image_layer, *layers_over(viewer, image_layer)]:
        _rescale(layer, factor, units)
    update_scale_bar(viewer)
    if not any(str(lay.units[-1]) in ("um", "micrometer", "µm") for lay in viewer.layers):
        scale_bar(viewer).visible = False  # back in pixels everywhere: a bar in px says nothing
    viewer.reset_view()
