"""The tifffile backend of :func:`histoview.io.image.open_image`: TIFF, BigTIFF, OME-TIFF, SVS
and tiled pyramidal TIFFs, opened without reading pixels.

:func:`open_tiff` picks the file's main image (:mod:`histoview.io.tiff_layout`), states each
pyramid level's shown shape as a :class:`LazyTiffLevel` (its array is built on first use) and
reads the pixel size (:func:`histoview.io.pixel_size.tiff_calibration`). TIFF-based vendor
formats tifffile reads but draws wrongly (Philips' sparse tiles come back black, not white glass;
Ventana's overlapping tiles) go to OpenSlide instead
(:data:`~histoview.io.openslide_source.OPENSLIDE_TIFF_FORMATS`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.pixel_size import join_notes, tiff_calibration


class LazyTiffLevel:
    """Shown shape and dtype of a TIFF pyramid level; :meth:`open_level` makes its array (a memory
    map or tifffile's zarr store, seen through :class:`~histoview.io.tiff_layout.LevelView`)."""

    def __init__(self, path: Path, tf, series: int, level: int, layout):
        self._path, self._tf, self._series, self._level = path, tf, series, level
        self._layout = layout
        self.shape, self.dtype = tuple(layout.shape), np.dtype(layout.dtype)

    def open_level(self):
        from histoview.io.tiff_layout import UnsupportedTiff, open_level

        try:
            return open_level(self._tf, self._series, self._level, self._layout, self._path.name)
        except UnsupportedTiff as exc:
            raise ImageReadError(self._path, str(exc)) from exc


def open_tiff(path: Path, size: int) -> dict:
    """Open a TIFF through tifffile: the keyword arguments of
    :class:`~histoview.io.image.ImageSource` (``arrays``, ``calibration``, ``fmt``, ``closer``,
    ``image_note``, ``backend``).

    ``size`` is the file's length in bytes (the strip/tile bounds check).

    Raises:
        ImageReadError: not a readable TIFF, no image, data past the end of the file...
    """
    import tifffile

    from histoview.io.tiff_layout import UnsupportedTiff, check_tiff_data, main_series, tiff_layout

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for broken headers
        raise ImageReadError(path, f"not a readable TIFF ({exc})") from exc
    try:
        if not tf.series or not tf.pages:
            raise ImageReadError(path, "TIFF holds no image")
        index, series_note = main_series(tf)
        series = tf.series[index]
        try:
            check_tiff_data(series, size)
            page = series.levels[0].keyframe
            layouts = [tiff_layout(lv, path.name) for lv in series.levels]
        except UnsupportedTiff as exc:
            raise ImageReadError(path, str(exc)) from exc
        first = (layouts[0].shape[2:], layouts[0].orientation)
        for i, lay in enumerate(layouts):
            if (lay.shape[2:], lay.orientation) != first:  # a stray level ends the pyramid
                layouts = layouts[:i]
                break
        arrays = [LazyTiffLevel(path, tf, index, i, lay) for i, lay in enumerate(layouts)]
        calibration = tiff_calibration(tf, page)
        if layouts[0].transposed and calibration.yx_um:
            calibration = replace(calibration, yx_um=calibration.yx_um[::-1])
        image_note = join_notes([series_note, *layouts[0].notes])
        fmt = (
            "ome-tiff"
            if tf.is_ome
            else ("svs" if tf.is_svs else ("bigtiff" if tf.is_bigtiff else "tiff"))
        )
        return dict(
            arrays=arrays,
            calibration=calibration,
            fmt=fmt,
            closer=tf.close,
            image_note=image_note,
            backend="tifffile",
        )
    except ImageReadError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise ImageReadError(
            path, f"cannot read TIFF structure ({type(exc).__name__}: {exc})"
        ) from exc
