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

**Main-thread work.** A worker prepares everything (:func:`explanation_layer_data`, then
:func:`build_layers`: colour mapping, thumbnails, points and edges); the main thread only
inserts ready layers, one per turn of the event loop, without making each one the active
layer (napari would rebuild the layer controls each time), and selects the overlay once at
the end (:func:`show_overlay`). An explanation made again with the same settings on the
same image (:func:`run_key`) does not add a copy: its layers are kept and their data
swapped (:func:`swap_layer_data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE
from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.display import MAX_VISIBLE_EDGES, format_probability, has_contrast
from histoview.explain.methods import method_title
from histoview.preprocessing.patches import PatchGrid
from histoview.viewer._notice import set_notice


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


def tissue_colormap():
    """The tissue mask's colormap (:func:`histoview.viewer._slide_live.tissue_display`):
    glass transparent, tissue a trace of green (a 0.18 fill turned the stain's pink to grey:
    mean RGB (222, 149, 223) -> (187, 154, 197)), its outline green. Drawn translucent, not
    additive: adding green to a bright brightfield slide leaves it almost white."""
    from napari.utils.colormaps import Colormap

    from histoview.viewer._slide_live import TISSUE_FILL

    colors = [[0, 0, 0, 0], [0.1, 0.7, 0.3, 0.05], [0.0, 0.8, 0.25, 0.85]]
    return Colormap(colors=colors, controls=[0.0, TISSUE_FILL, 1.0], name="histoview tissue")


def read_layer_for_model(data, multiscale: bool, pixel_size_um: float | None, meta: dict):
    """``(rgb, downsample, level, level-0 shape)`` of an image layer's data for a model."""
    from histoview.io import to_rgb8

    if not multiscale:
        arr = np.asarray(data)
        return to_rgb8(arr), 1.0, 0, tuple(arr.shape[:2])
    from histoview.io.image import MAX_LEVEL_PIXELS

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
    """``"<method> [(<importance>)]: <predicted class> (<probability>)"``: distinct settings
    (attention or occlusion) get distinct names."""
    p = float(expl.probabilities[expl.predicted_class])
    importance = (expl.extra or {}).get("importance")
    setting = f" ({importance})" if importance else ""
    return f"{method_title(expl.method)}{setting}: {expl.predicted_label} ({format_probability(p)})"


def _metadata(expl: Explanation, image_name: str) -> dict:
    summary = expl.summary()
    summary["image_layer"] = image_name
    return {
        "histoview": {
            "explanation": summary,
            "notice": RESEARCH_NOTICE,
            **({"weights_notice": SYNTHETIC_NOTICE} if expl.synthetic else {}),
        },
        "histoview_explanation": expl,
    }


def _limits(values: np.ndarray) -> tuple[float, float]:
    """The colour scale of an overlay: its map's lowest to highest finite value, the
    convention of :mod:`histoview.explain.display` (the report and the compare view's
    min-max normalisation show the same); a constant map gets a hair's width."""
    finite = np.asarray(values, float)[np.isfinite(values)]
    hi = float(finite.max()) if finite.size else 1.0
    lo = float(finite.min()) if finite.size else 0.0
    return lo, hi if hi > lo else lo + 1e-6


@dataclass(frozen=True)
class Placement:
    """How an image layer maps its level-0 pixels to the world: what overlays copy
    (``layer_id``: the image layer's napari ``unique_id``, for :func:`run_key`)."""

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[str, str]
    name: str
    layer_id: str = ""

    @classmethod
    def of(cls, image_layer) -> Placement:
        return cls(
            tuple(float(v) for v in image_layer.scale[-2:]),
            tuple(float(v) for v in image_layer.translate[-2:]),
            tuple(str(u) for u in image_layer.units[-2:]),
            str(image_layer.name),
            str(getattr(image_layer, "unique_id", "")),
        )


def run_key(expl: Explanation, where: Placement, outlines: bool = False) -> str:
    """What makes two explanations the same run: the image layer, the method, the weights,
    the class explained, the method's setting, the pixel size and pyramid level, and whether
    outlines are drawn. The same key gives the same overlay (the methods are deterministic)."""
    extra = expl.extra or {}
    return repr(
        (
            where.layer_id or where.name,
            expl.method,
            expl.checkpoint_sha256,
            int(expl.target_class),
            extra.get("importance"),
            extra.get("pixel_size_um"),
            getattr(expl, "level", 0),
            bool(outlines),
        )
    )


def explanation_layer_data(
    expl: Explanation, where: Placement, *, outlines: bool = False, opacity: float = 1.0
) -> list[tuple]:
    """napari layer data tuples ``(data, kwargs, layer_type)`` that draw ``expl`` over the
    image placed by ``where``. Pure data: build it in a worker thread, add it on the main one
    (:func:`add_layer_data`)."""
    s = np.asarray(where.scale, float)
    t = np.asarray(where.translate, float)
    name = explanation_title(expl) + (" [synthetic demo weights]" if expl.synthetic else "")
    contrast = has_contrast(expl.values)
    if not contrast:
        name += " [no contrast]"
        opacity = min(opacity, 0.25)
    meta = _metadata(expl, where.name)
    meta["histoview"]["contrast"] = contrast
    meta["histoview"]["run_key"] = run_key(expl, where, outlines)
    meta["histoview"]["base_scale"] = [float(v) for v in where.scale]  # _calibration.follow_base
    cmap = method_colormap(expl.method)
    units = where.units
    geom = expl.geometry
    common = {"name": name, "opacity": opacity, "metadata": meta, "units": units}
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
        return [
            (
                data,
                {
                    **common,
                    "colormap": fading_colormap(cmap),
                    "blending": "translucent",
                    "contrast_limits": _limits(expl.values),
                    "gamma": 0.5,
                    "scale": scale,
                    "translate": translate,
                },
                "image",
            )
        ]
    if isinstance(geom, DenseMap):
        values = np.asarray(expl.values, np.float32)
        H, W = geom.image_shape
        cell = np.array([H / values.shape[0], W / values.shape[1]], float)
        return [
            (
                values,
                {
                    **common,
                    "colormap": fading_colormap(cmap),
                    "blending": "translucent",
                    "contrast_limits": _limits(values),
                    "scale": s * cell,
                    "translate": t + s * (cell - 1) / 2,
                    "interpolation2d": "linear",
                },
                "image",
            )
        ]
    if isinstance(geom, NucleiPoints):
        return _nuclei_layer_data(expl, geom, common, s, t, cmap, outlines)
    raise TypeError(f"cannot draw geometry {type(geom).__name__}")


def add_layer_data(viewer, layer_data: list[tuple]) -> list:
    """Add prepared layer data tuples to ``viewer`` (main thread), or swap them into the layers
    of an earlier run with the same :func:`run_key`; returns the layers shown."""
    from histoview.viewer._layer_updates import layers_of_run, swap_layer_data

    existing = layers_of_run(viewer, layer_data)
    if existing and swap_layer_data(existing, layer_data):
        return existing
    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layer_data]


def build_layers(layer_data: list[tuple]) -> list:
    """napari layers made from layer data tuples: models only, no Qt, so a worker thread can
    build them (thumbnails, colour mapping) and the main thread only inserts them."""
    from napari.layers import Layer

    return [Layer.create(data, kwargs, kind) for data, kwargs, kind in layer_data]


def insert_layers_stepwise(viewer, layers: list, done=None, schedule=None, select=None) -> None:
    """:func:`histoview.viewer._layer_updates.insert_layers_stepwise`."""
    from histoview.viewer._layer_updates import insert_layers_stepwise as insert

    insert(viewer, layers, done, schedule=schedule, select=select)


def add_explanation_layers(
    viewer, image_layer, expl: Explanation, *, outlines: bool = False, opacity: float = 1.0
) -> list:
    """Add ``expl`` over ``image_layer``; returns the new layers."""
    data = explanation_layer_data(
        expl, Placement.of(image_layer), outlines=outlines, opacity=opacity
    )
    return add_layer_data(viewer, data)


def _grid_step(geom: PatchGrid) -> np.ndarray:
    """Pixel distance between neighbouring grid cells (the stride, in level-0 pixels)."""
    step = []
    for axis in (0, 1):
        idx = geom.grid_index[:, axis]
        span = idx.max() - idx.min()
        step.append(
            (geom.origins[:, axis].max() - geom.origins[:, axis].min()) / span
            if span
            else geom.patch_size[axis]
        )
    return np.array(step, float)


def _nuclei_layer_data(expl, geom: NucleiPoints, common, s, t, cmap, outlines) -> list[tuple]:
    """Edges (thin, faint; hidden above MAX_VISIBLE_EDGES), outlines, then the nuclei as
    points the size of a nucleus, coloured by importance, on top."""
    out = []
    name, meta, units = common["name"], common["metadata"], common["units"]
    values = np.asarray(expl.values, np.float32)
    if geom.edge_index.size:
        ei = geom.edge_index
        keep = ei[0] < ei[1]
        a, b = ei[0, keep], ei[1, keep]
        vecs = np.stack([geom.centroids[a], geom.centroids[b] - geom.centroids[a]], axis=1)
        weights = np.asarray(geom.edge_weight, np.float32)[keep]
        out.append(
            (
                vecs,
                {
                    "name": f"{name}: graph edges",
                    "edge_width": 0.4,
                    "vector_style": "line",
                    "features": {"weight": weights},
                    "edge_color": "weight",
                    "edge_colormap": fading_colormap("gray"),
                    "opacity": 0.35,
                    "visible": len(vecs) <= MAX_VISIBLE_EDGES,
                    "scale": s,
                    "translate": t,
                    "metadata": {"histoview": meta["histoview"]},
                    "units": units,
                },
                "vectors",
            )
        )
    if outlines and geom.outlines:
        polys = [np.asarray(p, float) for p in geom.outlines if len(p) >= 3]
        out.append(
            (
                polys,
                {
                    "shape_type": "polygon",
                    "name": f"{name}: outlines",
                    "edge_color": "cyan",
                    "face_color": "transparent",
                    "edge_width": 0.8,
                    "scale": s,
                    "translate": t,
                    "units": units,
                    "metadata": {"histoview": meta["histoview"]},
                },
                "shapes",
            )
        )
    features = {"importance": values, **{k: np.asarray(v) for k, v in geom.features.items()}}
    out.append(
        (
            geom.centroids,
            {
                **common,
                "features": features,
                "face_color": "importance",
                "face_colormap": fading_colormap(cmap, floor=0.35),
                "face_contrast_limits": _limits(values),
                # each point as wide as its nucleus: one mean size covered the small ones
                "size": geom.diameters((expl.extra or {}).get("pixel_size_um")),
                "border_width": 0,
                "scale": s,
                "translate": t,
            },
            "points",
        )
    )
    return out


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
        expl = explain_array(
            image, method, net, meta, sha, pixel_size_um=layer_pixel_size(image_layer)
        )
        added.extend(add_explanation_layers(viewer, image_layer, expl))
    set_notice(viewer, added)
    return added
