"""Draw explanations as napari layers, aligned with the tissue they explain.

An explanation's geometry is in level-0 pixels of its image; the image layer
maps pixels to world coordinates with its ``scale`` and ``translate``. Each
overlay is placed with the same mapping:

* patch grid -> an image layer with one pixel per patch, scaled by the stride
  and shifted by half a patch, so every cell covers exactly its patch;
* dense map (Grad-CAM, RMCG) -> an image layer scaled so the map covers the image;
* nuclei -> a points layer coloured by importance, the graph's edges as a
  vectors layer (opacity by weight), optional outlines as a shapes layer.

Values stay raw numbers (readable under the mouse); colour limits run from 0
to the method's maximum, so every overlay uses its full colour range.
"""

from __future__ import annotations

import numpy as np

from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE
from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.methods import method_title
from histoview.preprocessing.patches import PatchGrid


def method_colormap(method: str) -> str:
    """The overlay colormap of a method (its registry record's), inferno for unknown ones."""
    from histoview.explain.methods import METHODS

    return METHODS[method].colormap if method in METHODS else "inferno"


def fading_colormap(colormap, floor: float = 0.0):
    """A colormap (or its name) with opacity rising from ``floor`` (lowest value) to 0.9 (highest).

    Unimportant tissue stays visible under the overlay instead of being tinted
    by the colormap's darkest colour.
    """
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(colormap)
    name = base.name.removesuffix(" (fading)")
    x = np.linspace(0, 1, 64)
    rgba = np.asarray(base.map(x), float)
    rgba[:, 3] = floor + (0.9 - floor) * np.clip(x / 0.6, 0, 1) ** 0.8
    return Colormap(colors=rgba, name=f"{name} (fading)", controls=x)


def read_layer_for_model(data, multiscale: bool, pixel_size_um: float | None, meta: dict):
    """``(rgb, downsample, level, level-0 shape)`` of an image layer's data for a model."""
    from histoview.io import to_rgb8

    if not multiscale:
        arr = np.asarray(data)
        return to_rgb8(arr), 1.0, 0, tuple(arr.shape[:2])
    from histoview.explain.run import MAX_LEVEL_PIXELS

    level, target = 0, meta.get("pixel_size_um")
    if pixel_size_um and target:
        for i in range(len(data)):
            if pixel_size_um * data[0].shape[0] / data[i].shape[0] <= target * 1.01:
                level = i
    while level < len(data) - 1 and data[level].shape[0] * data[level].shape[1] > MAX_LEVEL_PIXELS:
        level += 1
    downsample = data[0].shape[0] / data[level].shape[0]
    return to_rgb8(np.asarray(data[level])), downsample, level, tuple(data[0].shape[:2])


def layer_pixel_size(layer) -> float | None:
    info = layer.metadata.get("histoview", {}) if hasattr(layer, "metadata") else {}
    return info.get("pixel_size_um")


def explanation_title(expl: Explanation) -> str:
    p = float(expl.probabilities[expl.predicted_class])
    return f"{method_title(expl.method)}: {expl.predicted_label} ({p:.2f})"


def _metadata(expl: Explanation, image_layer) -> dict:
    summary = expl.summary()
    summary["image_layer"] = image_layer.name
    return {"histoview": {"explanation": summary, "notice": RESEARCH_NOTICE,
                          **({"weights_notice": SYNTHETIC_NOTICE} if expl.synthetic else {})},
            "histoview_explanation": expl}


def _limits(values: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(values, float)[np.isfinite(values)]
    hi = float(finite.max()) if finite.size else 1.0
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    return lo, hi if hi > lo else lo + 1e-6


def add_explanation_layers(viewer, image_layer, expl: Explanation, *, outlines: bool = False,
                           opacity: float = 1.0) -> list:
    """Add ``expl`` over ``image_layer``; returns the new layers."""
    s = np.asarray(image_layer.scale[-2:], float)
    t = np.asarray(image_layer.translate[-2:], float)
    name = explanation_title(expl) + (" [synthetic demo weights]" if expl.synthetic else "")
    meta = _metadata(expl, image_layer)
    cmap = method_colormap(expl.method)
    units = tuple(image_layer.units[-2:])
    geom = expl.geometry
    layers = []
    if isinstance(geom, PatchGrid):
        ph, pw = geom.patch_size
        step = _grid_step(geom) if len(geom) > 1 else np.array([ph, pw], float)
        if np.allclose(step, (ph, pw)):
            data = geom.to_grid(expl.values, fill=0.0)
            scale = s * step
            translate = t + s * (np.array([ph, pw], float) - 1) / 2
        else:  # overlapping patches: paint at the stride's resolution
            factor = max(int(step.min()), 1)
            shape = (geom.image_shape[0] // factor, geom.image_shape[1] // factor)
            data = geom.rasterize(expl.values, shape=shape)
            scale = s * np.array(geom.image_shape, float) / np.array(shape, float)
            translate = t + (scale - s) / 2
        layers.append(viewer.add_image(data, name=name, colormap=fading_colormap(cmap), opacity=opacity,
                                       blending="translucent", contrast_limits=_limits(expl.values),
                                       gamma=0.5, scale=scale, translate=translate, metadata=meta,
                                       units=units))
    elif isinstance(geom, DenseMap):
        values = np.asarray(expl.values, np.float32)
        H, W = geom.image_shape
        cell = np.array([H / values.shape[0], W / values.shape[1]], float)
        layers.append(viewer.add_image(values, name=name, colormap=fading_colormap(cmap), opacity=opacity,
                                       blending="translucent", contrast_limits=_limits(values), scale=s * cell,
                                       translate=t + s * (cell - 1) / 2, metadata=meta,
                                       interpolation2d="linear", units=units))
    elif isinstance(geom, NucleiPoints):
        layers.extend(_add_nuclei(viewer, expl, geom, name, meta, s, t, cmap, outlines, units))
    else:
        raise TypeError(f"cannot draw geometry {type(geom).__name__}")
    return layers


def _grid_step(geom: PatchGrid) -> np.ndarray:
    """Pixel distance between neighbouring grid cells (the stride, in level-0 pixels)."""
    step = []
    for axis in (0, 1):
        idx = geom.grid_index[:, axis]
        span = idx.max() - idx.min()
        step.append((geom.origins[:, axis].max() - geom.origins[:, axis].min()) / span if span else geom.patch_size[axis])
    return np.array(step, float)


def _add_nuclei(viewer, expl, geom: NucleiPoints, name, meta, s, t, cmap, outlines, units) -> list:
    layers = []
    values = np.asarray(expl.values, np.float32)
    if geom.edge_index.size:
        ei = geom.edge_index
        keep = ei[0] < ei[1]
        a, b = ei[0, keep], ei[1, keep]
        vecs = np.stack([geom.centroids[a], geom.centroids[b] - geom.centroids[a]], axis=1)
        weights = np.asarray(geom.edge_weight, np.float32)[keep]
        layers.append(viewer.add_vectors(
            vecs, name=f"{name}: graph edges", edge_width=0.7,
            vector_style="line", features={"weight": weights}, edge_color="weight",
            edge_colormap=fading_colormap("gray"), opacity=0.7, scale=s, translate=t, metadata={"histoview": meta["histoview"]}, units=units))
    if outlines and geom.outlines:
        polys = [np.asarray(p, float) for p in geom.outlines if len(p) >= 3]
        layers.append(viewer.add_shapes(polys, shape_type="polygon", name=f"{name}: outlines",
                                        edge_color="cyan", face_color="transparent", edge_width=0.8,
                                        scale=s, translate=t, visible=True, units=units))
    features = {"importance": values, **{k: np.asarray(v) for k, v in geom.features.items()}}
    layers.append(viewer.add_points(
        geom.centroids, name=name, features=features, face_color="importance",
        face_colormap=fading_colormap(cmap, floor=0.35), face_contrast_limits=_limits(values),
        size=max(4.0, geom.radius * 1.2), border_width=0, opacity=1.0,
        scale=s, translate=t, metadata=meta, units=units))
    return layers


def add_demo_explanations(viewer, image_layer, methods=None) -> list:
    """Run ``methods`` (default: every "Run all" method) with bundled demo weights on
    ``image_layer`` and add the overlays.

    Methods whose demo weights are not bundled are skipped with a message.
    """
    from histoview.explain.methods import list_methods
    from histoview.explain.run import explain_array, load_for_method
    from histoview.io import to_rgb8

    added = []
    image = to_rgb8(np.asarray(image_layer.data))
    for method in methods if methods is not None else list_methods(run_all=True):
        try:
            net, meta, sha = load_for_method(method)
        except Exception as exc:  # missing demo weights: say so, keep going
            print(f"histoview demo: {method} skipped ({exc})")
            continue
        expl = explain_array(image, method, net, meta, sha, pixel_size_um=layer_pixel_size(image_layer))
        added.extend(add_explanation_layers(viewer, image_layer, expl))
    _set_notice(viewer, added)
    return added


def _set_notice(viewer, layers) -> None:
    titles = [lay.name for lay in layers if "histoview_explanation" in lay.metadata]
    text = "\n".join(titles)
    overlay = viewer_text_overlay(viewer)
    overlay.text = (text + "\n" if text else "") + RESEARCH_NOTICE
    overlay.visible = True
    overlay.position = "top_left"
    overlay.font_size = 10
    overlay.color = "white"


def viewer_text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9, else ``text_overlay``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "text", None) or viewer.text_overlay
