"""napari reader contribution: histology images as lazy (multiscale) layers.

PNG/JPEG open as plain arrays; TIFFs (BigTIFF, OME-TIFF, tiled pyramids) open
as multiscale layers whose levels are tifffile zarr stores, so napari reads
only the tiles on screen. A large TIFF without a pyramid gets lazy 2x
decimated levels. The file's pixel size, (y, x) micrometres (anisotropic pixels are shown to
scale), sets the layer's scale, and an OME-TIFF map's plane position (the maps ``histoview
explain`` writes of a slide or a region) its translation, so a map overlays its slide in place;
``layer.metadata["histoview"]`` holds
:meth:`~histoview.io.image.ImageSource.describe`: the pixel size, where it came from
(``pixel_size_source`` ``"file"`` or ``"unknown"``, ``pixel_size_origin``), why a value in the
file was ignored (``pixel_size_note``) and the objective power. An unknown pixel size leaves the
layer in pixels; explanations then estimate it (:func:`histoview.models.inputs.resolve_pixel_size`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoview.io.image import SUPPORTED_SUFFIXES, ImageSource, open_image

#: single-level images larger than this (pixels along a side) get lazy lower levels.
LAZY_PYRAMID_ABOVE = 8192


def napari_get_reader(path):
    """Return :func:`read_images` if histoview handles ``path`` (a file or list of files), else None.

    Never raises: napari asks every reader plugin about every dropped path.
    """
    paths = (
        [path]
        if isinstance(path, (str, Path))
        else list(path)
        if isinstance(path, (list, tuple))
        else []
    )
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, (str, Path)) or not str(p).lower().endswith(SUPPORTED_SUFFIXES):
            return None
    return read_images


def read_images(path) -> list[tuple]:
    """Read one file or a list of files into napari layer data tuples.

    Raises:
        ImageReadError: with the file name and the problem, for any file that
            cannot be read; napari reports it and keeps running.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = [layer_data_from_source(open_image(p)) for p in paths]
    from histoview.viewer._models import warm_up_on_open
    from histoview.viewer._scale_bar import follow_scale_bar_of_current_viewer

    warm_up_on_open()  # the docks' models, in the background, before a dock is opened
    follow_scale_bar_of_current_viewer()  # a calibrated image shows its scale bar at once
    return layers


def layer_data_from_source(src: ImageSource) -> tuple:
    """``(data, kwargs, "image")`` for an opened image."""
    arrays = [src.level_array(i) for i in range(src.n_levels)]
    if len(arrays) == 1 and max(src.shape[:2]) > LAZY_PYRAMID_ABOVE:
        arrays = _lazy_levels(arrays[0])
    multiscale = len(arrays) > 1
    info = src.describe()
    kwargs = {
        "name": src.path.name,
        "rgb": src.is_rgb,
        "multiscale": multiscale,
        "metadata": {"histoview": info},
    }
    if src.pixel_size_yx:
        kwargs["scale"] = tuple(float(v) for v in src.pixel_size_yx)
        kwargs["units"] = ("um", "um")
        if src.position_um:
            # a map of (a region of) a slide: its top-left corner sits position_um from the
            # slide's; napari places pixel centres, so add half a pixel (the slide's own half
            # pixel, a fraction of a micrometre, is not known here)
            kwargs["translate"] = tuple(
                float(p) + float(s) / 2 for p, s in zip(src.position_um, src.pixel_size_yx)
            )
    if src.dtype != np.uint8:
        kwargs["contrast_limits"] = _contrast_limits(arrays[-1], src.dtype)
    if info.get("format") == "ome-tiff" and not src.is_rgb:
        kwargs.update(_map_look(src.path))
    return (arrays if multiscale else arrays[0], kwargs, "image")


def _map_look(path) -> dict:
    """How a map histoview wrote (``histoview explain SLIDE``) is drawn when opened again: in
    its method's colours, fading out where the values are low so the slide shows through, as
    the dock drew it, tagged in its name when its weights are synthetic demo weights; before,
    it covered the slide in opaque grey. Nothing for any other OME-TIFF."""
    from histoview.explain.methods import METHODS
    from histoview.io.ome_tiff import read_map_annotation

    about = read_map_annotation(path)
    method = METHODS.get(about.get("method", ""))
    if method is None:
        return {}
    from histoview.viewer.overlays import fading_colormap

    look = {"colormap": fading_colormap(method.colormap), "blending": "translucent"}
    if "synthetic demo weights" in about.get("notice", "").lower():
        look["name"] = f"{Path(path).name} [synthetic demo weights]"
    return look


def _lazy_levels(array) -> list:
    import dask.array as da

    base = da.from_zarr(array) if hasattr(array, "store") else da.from_array(array)
    levels = [base]
    while max(levels[-1].shape[:2]) > 2048:
        levels.append(levels[-1][::2, ::2])
    return levels


def _contrast_limits(array, dtype) -> tuple[float, float]:
    sample = np.asarray(array[:: max(1, array.shape[0] // 512), :: max(1, array.shape[1] // 512)])
    if sample.ndim == 3:
        sample = sample[..., :3]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        lo, hi = (
            (0.0, float(info.max)) if info else (float(sample.min()), float(sample.max()) + 1.0)
        )
    return float(lo), float(hi)
