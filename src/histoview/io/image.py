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

**Pixel size** (micrometres per pixel of level 0, kept as (y, x)) comes, in this order, from
the caller's override, OME-XML ``PhysicalSizeX`` / ``PhysicalSizeY`` with their units, an
Aperio ``MPP =`` entry in the image description, or the resolution tags (TIFF
``XResolution`` / ``YResolution`` / ``ResolutionUnit``, PNG ``pHYs``, JPEG JFIF density).
Only a value that can be a microscope calibration is trusted: resolution tags without a
unit, round screen/print values (72, 96, 150, 300, 600... pixels per inch, what most image
tools write by default: 72 dpi would be 352.8 um/px) and anything outside
:data:`PLAUSIBLE_PIXEL_SIZE_UM` are ignored, and :attr:`ImageSource.pixel_size_note` says
so. Pixels whose y and x sizes differ by more than :data:`ANISOTROPY_TOLERANCE` keep both
(the viewer shows them to scale) but :meth:`ImageSource.check_square_pixels` refuses them
for analysis: histoview's models assume square pixels. An unknown pixel size is ``None``;
:func:`histoview.models.inputs.resolve_pixel_size` decides what to do then (estimate it from
the image). The objective power (Aperio ``AppMag``, OME ``NominalMagnification``) is kept
when the file says it.

Any file that cannot be read raises :class:`ImageReadError`, whose message
starts with the file name and says what is wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")

#: smallest image (height and width, pixels) histoview will analyse.
MIN_SIZE = 8
#: PNG/JPEG files are decoded whole; refuse ones whose header claims more pixels than this.
MAX_PLAIN_PIXELS = 400_000_000
#: pixel sizes (um/px) a histology image can have: ~0.04 (BreakHis 400X, oil objectives) to 20
#: (a slide thumbnail); a file's value outside this range is not a microscope calibration.
PLAUSIBLE_PIXEL_SIZE_UM = (0.04, 20.0)
#: pixels per inch that screen and print software write by default (not a calibration).
DPI_DEFAULTS = (
    72,
    96,
    100,
    120,
    144,
    150,
    180,
    200,
    240,
    250,
    300,
    350,
    360,
    400,
    480,
    600,
    720,
    800,
    1200,
    2400,
    4800,
)
#: y and x pixel sizes further apart than this fraction of their mean are anisotropic.
ANISOTROPY_TOLERANCE = 0.02
# micrometres per unit of OME-XML UnitsLength and of the TIFF/PNG resolution units
_UM_PER_UNIT = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "dm": 1e5,
    "m": 1e6,
    "in": 25_400.0,
}
_TIFF_UNITS = {
    2: ("inch", 25_400.0),
    3: ("centimetre", 1e4),
    4: ("millimetre", 1e3),
    5: ("micrometre", 1.0),
}


class ImageReadError(ValueError):
    """A file histoview cannot read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class PixelCalibration:
    """What a file says about its physical pixel size.

    Attributes:
        yx_um: trusted (y, x) micrometres per pixel of level 0, or None (unknown).
        origin: where the value came from (e.g. ``"OME-XML PhysicalSizeX/Y"``), or None.
        note: why a value in the file was ignored or adjusted, or None.
        objective_power: the objective's magnification when the file says it (e.g. 40.0).
    """

    yx_um: tuple[float, float] | None = None
    origin: str | None = None
    note: str | None = None
    objective_power: float | None = None


def _fmt_um(v: float) -> str:
    return f"{v:.4g} um/px"


def _plausible(
    y_um: float, x_um: float, what: str
) -> tuple[tuple[float, float] | None, str | None]:
    """``((y, x), None)`` when both can be a microscope calibration, else ``(None, note)``."""
    lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
    for v in (y_um, x_um):
        if not (np.isfinite(v) and lo <= v <= hi):
            size = _fmt_um(x_um) if x_um == y_um else f"{_fmt_um(y_um)} (y) x {_fmt_um(x_um)} (x)"
            return None, (
                f"{what}: {size} is outside the {lo:g}-{hi:g} um/px of histology images, not a "
                "microscope calibration; ignored"
            )
    return (float(y_um), float(x_um)), None


def _from_resolution(
    x_per_unit: float, y_per_unit: float, unit: str | None, um_per_unit: float | None, what: str
) -> tuple[tuple[float, float] | None, str | None]:
    """Trusted (y, x) um/px from pixels-per-unit resolution values, or ``(None, note)``."""
    if not (x_per_unit > 0 and y_per_unit > 0):
        return None, f"{what}: zero or missing; ignored"
    if um_per_unit is None:
        if x_per_unit == y_per_unit == 1:
            return None, None  # tifffile's and libtiff's placeholder: no resolution given
        return None, f"{what}: {x_per_unit:.6g} pixels per unspecified unit, no unit; ignored"
    y_um, x_um = um_per_unit / y_per_unit, um_per_unit / x_per_unit
    if unit == "inch":
        for value in {x_per_unit, y_per_unit}:
            dpi = min(DPI_DEFAULTS, key=lambda d: abs(d - value))
            if abs(dpi - value) <= 0.005 * dpi:
                return None, (
                    f"{what}: {value:.4g} pixels per inch ({_fmt_um(25_400.0 / value)}) is a "
                    "screen/print default that image tools write, not a microscope calibration; "
                    "ignored"
                )
    return _plausible(y_um, x_um, what)


def _is_anisotropic(yx: tuple[float, float]) -> bool:
    y, x = yx
    return abs(y - x) > ANISOTROPY_TOLERANCE * 0.5 * (y + x)


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
        return self.pixel_size_yx is None or not _is_anisotropic(self.pixel_size_yx)

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
            _is_anisotropic(self.pixel_size_yx)
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
                f"{self.path}: level {level} has {lv.height} x {lv.width} pixels; read regions or a lower level"
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
        return f"ImageSource({self.path.name!r}, levels=[{levels}], dtype={self.dtype}, pixel_size_um={self.pixel_size_um})"


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
        src = _open_plain(path)
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


def _open_plain(path: Path) -> ImageSource:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PLAIN_PIXELS:
                raise ImageReadError(
                    path,
                    f"header claims {w} x {h} pixels, too many for a PNG/JPEG; use a tiled TIFF",
                )
            im.load()
            calibration = _plain_calibration(im)
            arr, image_note, transposed = _pil_to_array(path, im)
            if transposed and calibration.yx_um:
                calibration = replace(calibration, yx_um=calibration.yx_um[::-1])
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path, f"header claims too many pixels for a PNG/JPEG ({exc}); use a tiled TIFF"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from exc
    fmt = path.suffix.lower().lstrip(".")
    return ImageSource(path, [arr], calibration=calibration, fmt=fmt, image_note=image_note)


def _plain_calibration(im) -> PixelCalibration:
    """PNG ``pHYs`` / JPEG JFIF density as a calibration (Pillow gives per-inch ``dpi`` when
    the file has a unit, only ``aspect`` when it has none)."""
    what = "PNG pHYs" if im.format == "PNG" else f"{im.format} density"
    dpi = im.info.get("dpi")
    if dpi:
        try:
            x, y = (float(v) for v in dpi)
        except (TypeError, ValueError):
            return PixelCalibration(note=f"{what}: not a pair of numbers ({dpi!r}); ignored")
        yx, note = _from_resolution(x, y, "inch", 25_400.0, what)
        if yx is not None and im.format == "PNG":
            # pHYs stores pixels per metre; Pillow's dpi rounds through inches
            x_m, y_m = x / 0.0254, y / 0.0254
            yx = (1e6 / y_m, 1e6 / x_m)
        return PixelCalibration(yx, what if yx else None, note)
    if im.info.get("aspect"):
        return PixelCalibration(note=f"{what}: an aspect ratio without a unit; no pixel size")
    return PixelCalibration()


def _pil_to_array(path: Path, im) -> tuple[np.ndarray, str | None, bool]:
    """A decoded PNG/JPEG as it is meant to be seen: ``(array, note, transposed)``.

    The EXIF orientation is applied (Pillow's ``ImageOps.exif_transpose``; ``transposed`` when
    it swapped rows and columns); palette images become RGB(A); CMYK becomes RGB by Pillow's
    ICC-free rule ``R = 255 (1 - C)(1 - K)`` (G with M, B with Y). Pillow reads every CMYK JPEG
    with Adobe's inverted polarity; one without Adobe's APP14 marker stores plain CMYK, so its
    inversion is undone first. YCbCr, LAB and HSV become RGB, 1-bit images 0 / 255, gray with
    alpha gray; any other mode is refused (:class:`ImageReadError`).
    """
    from PIL import ImageOps

    from histoview.io.tiff_layout import ORIENTATION_NAMES

    notes = []
    orientation = im.getexif().get(0x0112, 1)
    transposed = False
    if orientation in ORIENTATION_NAMES:
        im = ImageOps.exif_transpose(im)
        transposed = orientation >= 5
        notes.append(
            f"EXIF orientation {orientation} applied: shown "
            f"{ORIENTATION_NAMES[orientation]} from how it is stored"
        )
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA"):
        pass
    elif mode in ("RGBa", "RGBX", "La"):
        im = im.convert({"RGBa": "RGBA", "RGBX": "RGB", "La": "LA"}[mode])
    elif mode == "CMYK":
        if im.format == "JPEG" and "adobe" not in im.info:
            im = im.point(lambda v: 255 - v)
            notes.append("CMYK JPEG without an Adobe marker: read as plain (not inverted) CMYK")
        im = im.convert("RGB")
        notes.append("CMYK converted to RGB without an ICC profile: R = (1 - C)(1 - K) etc.")
    elif mode in ("YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    else:
        raise ImageReadError(
            path,
            f"{im.format} colour mode {mode!r} is not supported; histoview reads gray, RGB, RGBA, "
            "palette and CMYK images: convert it to RGB first",
        )
    arr = np.asarray(im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if im.mode == "LA":
        arr = arr[..., 0]
    if im.mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr, _join(notes), transposed


def _open_tiff(path: Path, size: int) -> ImageSource:
    import tifffile

    from histoview.io.tiff_layout import UnsupportedTiff, main_series, tiff_layout

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for broken headers
        raise ImageReadError(path, f"not a readable TIFF ({exc})") from exc
    try:
        if not tf.series or not tf.pages:
            raise ImageReadError(path, "TIFF holds no image")
        index, series_note = main_series(tf)
        series = tf.series[index]
        _check_tiff_data(path, series, size)
        page = series.levels[0].keyframe
        try:
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
        image_note = _join([series_note, *layouts[0].notes])
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


def _check_tiff_data(path: Path, series, size: int) -> None:
    """Refuse TIFFs whose strips/tiles point past the end of the file (truncated or fake headers)."""
    for lv in series.levels:
        for page in lv.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if len(offsets) == 0 or counts.sum() == 0:
                raise ImageReadError(
                    path, f"TIFF header describes a {page.shape} image but holds no pixel data"
                )
            expected = int(np.prod(page.chunked))
            if len(offsets) < expected:
                raise ImageReadError(
                    path,
                    f"TIFF header describes a {page.shape} image of {expected} strips/tiles "
                    f"but lists only {len(offsets)}",
                )
            if page.compression == 1 and counts.sum() < page.size * page.bitspersample // 8:
                raise ImageReadError(
                    path, f"TIFF header describes a {page.shape} image but holds too few bytes"
                )
            end = int((offsets + counts).max())
            if end > size:
                missing = int(((offsets + counts) > size).sum())
                raise ImageReadError(
                    path,
                    f"TIFF is truncated: {missing} of {len(offsets)} strips/tiles of a {page.shape} image "
                    f"end beyond the file's {size} bytes",
                )


def tiff_calibration(tf, page) -> PixelCalibration:
    """The pixel size a TIFF states (module docstring): OME-XML, then Aperio, then resolution
    tags; the first trusted value wins, and notes of ignored ones are kept."""
    notes = []
    power = None
    if tf.is_ome and tf.ome_metadata:
        yx, note, power = _ome_pixel_size(tf.ome_metadata)
        if yx is not None:
            return PixelCalibration(yx, "OME-XML PhysicalSizeX/PhysicalSizeY", note, power)
        notes.append(note)
    desc = page.description or ""
    m = re.search(r"(?:^|\|)\s*AppMag\s*=\s*([0-9.]+)", desc)
    if m:
        try:
            power = float(m.group(1)) or power
        except ValueError:
            pass
    m = re.search(r"(?:^|\|)\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        try:
            mpp = float(m.group(1))
        except ValueError:
            mpp = float("nan")
        yx, note = _plausible(mpp, mpp, "Aperio MPP")
        if yx is not None:
            return PixelCalibration(yx, "Aperio MPP", _join(notes), power)
        notes.append(note)
    tags = page.tags
    if "XResolution" in tags:
        unit_code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF 6.0
        unit, um_per_unit = _TIFF_UNITS.get(unit_code, (None, None))
        x = _rational(tags["XResolution"].value)
        y = _rational(tags["YResolution"].value) if "YResolution" in tags else x
        yx, note = _from_resolution(x, y, unit, um_per_unit, "TIFF resolution tags")
        if yx is not None:
            return PixelCalibration(yx, f"TIFF resolution tags (per {unit})", _join(notes), power)
        notes.append(note)
    return PixelCalibration(None, None, _join(notes), power)


def _rational(value) -> float:
    if isinstance(value, tuple):
        num, den = value[:2]
        return num / den if den else 0.0
    return float(value)


def _join(notes: list) -> str | None:
    notes = [n for n in notes if n]
    return "; ".join(notes) if notes else None


def _ome_pixel_size(xml: str) -> tuple[tuple[float, float] | None, str | None, float | None]:
    """``((y, x) um/px or None, note, objective power)`` of the first OME image."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"OME-XML: cannot be parsed ({exc}); pixel size ignored", None
    local = {el: el.tag.rsplit("}", 1)[-1] for el in root.iter()}
    power = None
    for el, tag in local.items():
        if tag == "Objective" and el.get("NominalMagnification"):
            try:
                power = float(el.get("NominalMagnification"))
            except ValueError:
                pass
            break
    pixels = next((el for el, tag in local.items() if tag == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, None, power
    sizes = []
    for axis in ("X", "Y"):
        raw = pixels.get(f"PhysicalSize{axis}")
        if raw is None:
            sizes.append(None)
            continue
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        factor = _UM_PER_UNIT.get(unit)
        if factor is None:
            return None, f"OME-XML PhysicalSize{axis}: unknown unit {unit!r}; ignored", power
        try:
            sizes.append(float(raw) * factor)
        except ValueError:
            return None, f"OME-XML PhysicalSize{axis}: {raw!r} is not a number; ignored", power
    x, y = sizes
    note = None
    if y is None:
        y, note = x, "OME-XML: PhysicalSizeX only, square pixels assumed"
    yx, bad = _plausible(y, x, "OME-XML PhysicalSizeX/PhysicalSizeY")
    return yx, bad or note, power


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any image array (gray, RGB, RGBA, 8/16-bit, float) -> (H, W, 3) uint8 RGB for models.

    RGBA is composited on white (slide glass); 16-bit and float images are
    scaled by their dtype range (or their maximum for floats above 1).
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected a (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):
        f = arr.astype(np.float32) / max(float(arr.max()), 1.0)
    else:
        f = arr.astype(np.float32)
        if f.max() > 1.0:
            f = f / f.max()
    if f.shape[2] == 4:
        alpha = f[..., 3:4]
        f = f[..., :3] * alpha + (1.0 - alpha)
    if arr.dtype == np.uint8 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)


def read_rgb(
    path: str | os.PathLike, *, level: int = 0, pixel_size_um: float | None = None
) -> tuple[np.ndarray, ImageSource]:
    """Read a whole level as (H, W, 3) uint8 RGB for a model; returns ``(rgb, source)`` (source
    closed). Refuses anisotropic pixels (:meth:`ImageSource.check_square_pixels`)."""
    with open_image(path, pixel_size_um=pixel_size_um) as src:
        src.check_square_pixels()
        return to_rgb8(src.read_level(level)), src
