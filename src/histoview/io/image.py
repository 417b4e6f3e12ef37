"""Open histology images and read regions of any pyramid level, lazily.

:func:`open_image` takes PNG/JPEG (BreakHis), plain TIFF (BACH), BigTIFF,
OME-TIFF and tiled pyramidal TIFF (including Aperio SVS-style files) and
returns an :class:`ImageSource`: its pyramid levels and shapes, its pixel size
in micrometres per pixel, and :meth:`ImageSource.read_region` for any region
of any level. TIFFs are read through tifffile's zarr store, tile by tile, so a
50,000 x 50,000 slide opens in milliseconds and panning reads only what is
shown.

**Images as they are** (:mod:`histoview.io.tiff_layout`): a multi-image TIFF is read as its
main image, the largest series (an SVS's slide pyramid, not its thumbnail, label or macro);
planar (separate-plane) TIFFs come back with samples last; CMYK, YCbCr, palette and
min-is-white images are converted (CMYK by the naive, ICC-free ``R = 255 (1 - C)(1 - K)``,
the rule Pillow uses for PNG/JPEG) and other colour models refused by name; the TIFF
Orientation tag and the EXIF orientation of PNG/JPEG are applied. Uncompressed TIFF pixels are
memory-mapped, so a region of a single-strip 20,000 x 20,000 TIFF reads in a few MB;
compressed strips too large to decode for a region are refused with how to convert the file.
:attr:`ImageSource.image_note` says what was chosen, converted or turned.

**Pixel size**: which metadata is read and which values are trusted is
:mod:`histoview.io.pixel_size`; PNG/JPEG decoding (EXIF orientation, colour modes) is
:mod:`histoview.io.plain_image`. :meth:`ImageSource.check_square_pixels` refuses
anisotropic pixels for analysis.

Any file that cannot be read raises :class:`ImageReadError`, whose message
starts with the file name and says what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.pixel_size import (
    ANISOTROPY_TOLERANCE,
    PixelCalibration,
    is_anisotropic,
    join_notes,
    tiff_calibration,
)
from histoview.io.rgb import to_rgb8

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")

#: smallest image (height and width, pixels) histoview will analyse.
MIN_SIZE = 8


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: its array shape and downsample factor relative to level 0."""

    shape: tuple[int, ...]
    downsample: float

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]


class ImageSource:
    """An opened image: levels, pixel size, lazy region reads. Use :func:`open_image`.

    Arrays are (height, width) or (height, width, samples) with samples 3 (RGB)
    or 4 (RGBA), as the image is meant to be seen: palette, CMYK and YCbCr images come back
    as RGB, planar TIFFs with samples last, EXIF / TIFF orientation applied (module
    docstring). :attr:`image_note` says which image of a multi-image TIFF was chosen and what
    was converted or turned (None when nothing was). Close it (or use ``with``) to release
    the file.

    Pixel size (module docstring): :attr:`pixel_size_yx` is the trusted (y, x) um/px of level 0
    or None; :attr:`pixel_size_um` the square pixel size (None when unknown or anisotropic);
    :attr:`pixel_size_source` ``"file"``, ``"user"`` or None (unknown); :attr:`pixel_size_origin`
    which metadata it came from; :attr:`pixel_size_note` why a value in the file was ignored
    (or None); :attr:`objective_power` the objective's magnification when the file says it.
    """

    def __init__(
        self,
        path: Path,
        arrays: list,
        *,
        calibration: PixelCalibration | None = None,
        fmt: str,
        closer=None,
        image_note: str | None = None,
    ):
        self.path = path
        # Level arrays, or zero-argument callables that open them on first use (zarr stores),
        # so describing a file does not import or build zarr.
        self._arrays = list(arrays)
        self._closer = closer
        self.image_note = image_note
        cal = calibration or PixelCalibration()
        self.pixel_size_yx: tuple[float, float] | None = cal.yx_um
        self.pixel_size_source: str | None = "file" if cal.yx_um else None
        self.pixel_size_origin: str | None = cal.origin
        self.pixel_size_note: str | None = cal.note
        self.objective_power: float | None = cal.objective_power
        self.format = fmt
        shapes = [tuple(a.shape) for a in arrays]
        self._dtype = np.dtype(arrays[0].dtype)
        samples = shapes[0][2:]
        self.levels = [LevelInfo((sh[0], sh[1], *samples), shapes[0][0] / sh[0]) for sh in shapes]

    # -- description -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.levels[0].shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def is_rgb(self) -> bool:
        return len(self.shape) == 3 and self.shape[2] in (3, 4)

    # -- pixel size ---------------------------------------------------------------------------
    @property
    def square_pixels(self) -> bool:
        """False when the file's y and x pixel sizes differ by more than the tolerance."""
        return self.pixel_size_yx is None or not is_anisotropic(self.pixel_size_yx)

    @property
    def pixel_size_um(self) -> float | None:
        """Micrometres per (square) pixel of level 0; None when unknown or anisotropic."""
        if self.pixel_size_yx is None or not self.square_pixels:
            return None
        return 0.5 * (self.pixel_size_yx[0] + self.pixel_size_yx[1])

    def set_pixel_size(self, pixel_size_um: float) -> None:
        """Use ``pixel_size_um`` (square pixels), given by the user, instead of the file's."""
        v = float(pixel_size_um)
        if not (v > 0 and np.isfinite(v)):
            raise ValueError(
                f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
            )
        if self.pixel_size_yx is not None and (
            is_anisotropic(self.pixel_size_yx)
            or abs(self.pixel_size_um - v) > ANISOTROPY_TOLERANCE * v
        ):
            y, x = self.pixel_size_yx
            self.pixel_size_note = (
                f"given by the user; the file says {y:.4g} (y) x {x:.4g} (x) um/px"
            )
        self.pixel_size_yx, self.pixel_size_source = (v, v), "user"

    def check_square_pixels(self) -> None:
        """Raise :class:`ImageReadError` when the pixels are not square (analysis refuses them)."""
        if not self.square_pixels:
            y, x = self.pixel_size_yx
            raise ImageReadError(
                self.path,
                f"pixels are not square ({y:.4g} um high x {x:.4g} um wide, from "
                f"{self.pixel_size_origin}); histoview's models assume square pixels: resample the "
                "image to square pixels, or give --pixel-size if the file's values are wrong",
            )

    def level_pixel_size(self, level: int) -> float | None:
        """Micrometres per (square) pixel of ``level``; None when unknown or anisotropic."""
        if self.pixel_size_um is None:
            return None
        return self.pixel_size_um * self.levels[level].downsample

    def level_pixel_size_yx(self, level: int) -> tuple[float, float] | None:
        """(y, x) micrometres per pixel of ``level``, or None when unknown."""
        if self.pixel_size_yx is None:
            return None
        lv = self.levels[level]
        base = self.levels[0]
        return (
            self.pixel_size_yx[0] * base.height / lv.height,
            self.pixel_size_yx[1] * base.width / lv.width,
        )

    def describe(self) -> dict:
        """Plain-data summary (what ``histoview info`` prints); ``image_note`` says which image of
        a multi-image TIFF was chosen and what was converted or turned."""
        return {
            "path": str(self.path),
            "format": self.format,
            "dtype": str(self.dtype),
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_yx": list(self.pixel_size_yx) if self.pixel_size_yx else None,
            "pixel_size_source": self.pixel_size_source or "unknown",
            "pixel_size_origin": self.pixel_size_origin,
            "pixel_size_note": self.pixel_size_note,
            "square_pixels": self.square_pixels,
            "objective_power": self.objective_power,
            "image_note": self.image_note,
            "levels": [
                {"shape": list(lv.shape), "downsample": round(lv.downsample, 4)}
                for lv in self.levels
            ],
        }

    # -- reading -------------------------------------------------------------------------------
    def level_array(self, level: int = 0):
        """The lazy array of one level (zarr for TIFF, numpy for PNG/JPEG); index it to read."""
        self._check_level(level)
        array = self._arrays[level]
        if isinstance(array, _LazyLevel):
            array = self._arrays[level] = array.open()
        return array

    def read_region(self, level: int, origin: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` = (height, width) pixels at ``origin`` = (row, col) of ``level``.

        Only the tiles under the region are decoded. The region is clipped to
        the level; a region wholly outside raises ValueError.
        """
        self._check_level(level)
        lv = self.levels[level]
        r0, c0 = (int(v) for v in origin)
        h, w = (int(v) for v in size)
        r1, c1 = min(r0 + h, lv.height), min(c0 + w, lv.width)
        r0, c0 = max(r0, 0), max(c0, 0)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(
                f"region {origin} + {size} lies outside level {level} of shape {lv.shape[:2]}"
            )
        try:
            return np.asarray(self.level_array(level)[r0:r1, c0:c1])
        except ImageReadError:
            raise
        except Exception as exc:  # decoding errors from tifffile/imagecodecs
            raise ImageReadError(
                self.path, f"cannot decode pixels of level {level} ({exc})"
            ) from exc

    def read_level(self, level: int = 0, *, max_pixels: int = 120_000_000) -> np.ndarray:
        """Read a whole level (refuses levels above ``max_pixels``: pick a lower level)."""
        lv = self.levels[level] if 0 <= level < self.n_levels else self._check_level(level)
        if lv.height * lv.width > max_pixels:
            raise ValueError(
                f"{self.path}: level {level} has {lv.height} x {lv.width} pixels; "
                "read regions or a lower level"
            )
        return self.read_region(level, (0, 0), (lv.height, lv.width))

    def best_level_for(self, pixel_size_um: float) -> int:
        """The finest level whose pixel size is at most ``pixel_size_um`` (level 0 if unknown)."""
        if self.pixel_size_um is None:
            return 0
        best = 0
        for i in range(self.n_levels):
            if self.level_pixel_size(i) <= pixel_size_um * 1.01:
                best = i
        return best

    def _check_level(self, level: int):
        if not 0 <= level < self.n_levels:
            raise IndexError(
                f"{self.path}: level {level} does not exist (levels 0..{self.n_levels - 1})"
            )

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        levels = ", ".join("x".join(map(str, lv.shape)) for lv in self.levels)
        return (
            f"ImageSource({self.path.name!r}, levels=[{levels}], dtype={self.dtype}, "
            f"pixel_size_um={self.pixel_size_um})"
        )


class _LazyLevel:
    """Shown shape and dtype of a TIFF pyramid level; ``open()`` makes its array (a memory map
    or tifffile's zarr store, seen through :class:`~histoview.io.tiff_layout.LevelView`)."""

    def __init__(self, path: Path, tf, series: int, level: int, layout):
        self._path, self._tf, self._series, self._level = path, tf, series, level
        self._layout = layout
        self.shape, self.dtype = tuple(layout.shape), np.dtype(layout.dtype)

    def open(self):
        from histoview.io.tiff_layout import UnsupportedTiff, open_level

        try:
            return open_level(self._tf, self._series, self._level, self._layout, self._path.name)
        except UnsupportedTiff as exc:
            raise ImageReadError(self._path, str(exc)) from exc


def open_image(path: str | os.PathLike, *, pixel_size_um: float | None = None) -> ImageSource:
    """Open an image file without reading its pixels.

    Args:
        path: a .png, .jpg, .jpeg, .tif, .tiff or .svs file.
        pixel_size_um: micrometres per pixel of level 0; overrides the file's metadata.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image,
            claims data it does not hold, or is too small to analyse.
    """
    path = Path(path)
    if pixel_size_um is not None and not (pixel_size_um > 0 and np.isfinite(pixel_size_um)):
        raise ValueError(
            f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
        )
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        src = _open_tiff(path, size)
    elif magic.startswith(b"\x89PNG") or magic[:3] == b"\xff\xd8\xff":
        from histoview.io.plain_image import decode_plain

        arr, calibration, image_note = decode_plain(path)
        fmt = path.suffix.lower().lstrip(".")
        src = ImageSource(path, [arr], calibration=calibration, fmt=fmt, image_note=image_note)
    else:
        kind = "text" if _looks_like_text(path) else "unknown binary data"
        raise ImageReadError(
            path, f"not a PNG, JPEG or TIFF image (content is {kind}, starts with {magic[:8]!r})"
        )
    h, w = src.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        src.close()
        raise ImageReadError(
            path, f"image is {h} x {w} pixels; histoview needs at least {MIN_SIZE} x {MIN_SIZE}"
        )
    if pixel_size_um is not None:
        src.set_pixel_size(pixel_size_um)
    return src


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _open_tiff(path: Path, size: int) -> ImageSource:
    import tifffile

    from histoview.io.tiff_layout import (
        UnsupportedTiff,
        check_tiff_data,
        main_series,
        tiff_layout,
    )

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
        arrays = [_LazyLevel(path, tf, index, i, lay) for i, lay in enumerate(layouts)]
        calibration = tiff_calibration(tf, page)
        if layouts[0].transposed and calibration.yx_um:
            calibration = replace(calibration, yx_um=calibration.yx_um[::-1])
        image_note = join_notes([series_note, *layouts[0].notes])
        fmt = (
            "ome-tiff"
            if tf.is_ome
            else ("svs" if tf.is_svs else ("bigtiff" if tf.is_bigtiff else "tiff"))
        )
        return ImageSource(
            path, arrays, calibration=calibration, fmt=fmt, closer=tf.close, image_note=image_note
        )
    except ImageReadError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise ImageReadError(
            path, f"cannot read TIFF structure ({type(exc).__name__}: {exc})"
        ) from exc


def read_rgb(
    path: str | os.PathLike, *, level: int = 0, pixel_size_um: float | None = None
) -> tuple[np.ndarray, ImageSource]:
    """Read a whole level as (H, W, 3) uint8 RGB for a model; returns ``(rgb, source)`` (source
    closed). Refuses anisotropic pixels (:meth:`ImageSource.check_square_pixels`)."""
    with open_image(path, pixel_size_um=pixel_size_um) as src:
        src.check_square_pixels()
        return to_rgb8(src.read_level(level)), src
