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

**Backends** (:attr:`ImageSource.backend`): tifffile for TIFFs it reads correctly
(:mod:`histoview.io.tiff_source`), Pillow for PNG/JPEG, OpenSlide for vendor formats (MRXS, VMS,
BIF, SCN, NDPI, SVSLIDE, Philips TIFF) and for TIFFs tifffile cannot read, wsidicom for DICOM
where installed (:mod:`histoview.io.openslide_source`). ``open_image(path, backend=...)`` or the
environment variable ``HISTOVIEW_IMAGE_BACKEND`` forces one. :meth:`ImageSource.read_rect` reads
any rectangle at a pixel size (:mod:`histoview.io.resolution`).

Any file that cannot be read raises :class:`ImageReadError`, whose message
starts with the file name and says what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.openslide_source import DICOM_SUFFIXES, OPENSLIDE_SUFFIXES
from histoview.io.pixel_size import ANISOTROPY_TOLERANCE, PixelCalibration, is_anisotropic
from histoview.io.rgb import to_rgb8
from histoview.io.tiff_source import LazyTiffLevel

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = (
    (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs") + OPENSLIDE_SUFFIXES + DICOM_SUFFIXES
)
BACKENDS = ("tifffile", "openslide", "wsidicom", "pillow")

#: smallest image (height and width, pixels) histoview will analyse.
MIN_SIZE = 8

#: largest image or pyramid level (pixels) read and explained in one piece; a slide larger
#: than this at the model's pixel size is explained tile by tile (the slide engine)
MAX_LEVEL_PIXELS = 40_000_000


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
    :attr:`backend` names the library that reads it (module docstring); :attr:`last_level` is
    the level the latest :meth:`read_rect` read (None before).
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
        backend: str = "tifffile",
    ):
        self.path, self.backend, self.last_level = path, backend, None
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
        #: (y, x) um of the top-left corner on the slide it came from (OME Plane), or None
        self.position_um: tuple[float, float] | None = cal.position_um
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
            "backend": self.backend,
            "position_um": list(self.position_um) if self.position_um else None,
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
                {
                    "shape": list(lv.shape),
                    "downsample": round(lv.downsample, 4),
                    "pixel_size_um": self.level_pixel_size(i),
                }
                for i, lv in enumerate(self.levels)
            ],
        }

    # -- reading -------------------------------------------------------------------------------
    def level_array(self, level: int = 0):
        """The lazy array of one level (zarr for TIFF, numpy for PNG/JPEG); index it to read."""
        self._check_level(level)
        array = self._arrays[level]
        if isinstance(array, LazyTiffLevel):
            array = self._arrays[level] = array.open_level()
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

    def level_for_pixel_size(self, pixel_size_um: float) -> int:
        """The level :meth:`read_rect` reads for ``pixel_size_um``: the coarsest whose pixel size
        is <= ``pixel_size_um`` * 1.01. Raises as :meth:`read_rect` does for the pixel size."""
        from histoview.io.resolution import level_for_pixel_size

        return level_for_pixel_size(self, pixel_size_um)

    def read_rect(self, location, size, pixel_size_um: float, *, pad=255) -> np.ndarray:
        """Read ``size`` = (height, width) output pixels at ``pixel_size_um`` (um/px) whose top-left
        corner is ``location`` = (row, col) in level-0 pixels (floats allowed): uint8 (h, w, 3) RGB,
        from the nearest finer level, only the tiles under it decoded, area-averaged to the exact
        size, ``pad`` outside the image (:mod:`histoview.io.resolution`).

        Raises:
            ImageReadError: unknown or anisotropic pixel size (:meth:`set_pixel_size` first); a
                tile that cannot be decoded.
            ValueError: ``pixel_size_um`` finer than level 0 by over 1 %; a rectangle wholly
                outside the image (named in the message, with the file and the image)."""
        from histoview.io.resolution import read_rect

        return read_rect(self, location, size, pixel_size_um, pad=pad)

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


def open_image(
    path: str | os.PathLike, *, pixel_size_um: float | None = None, backend: str | None = None
) -> ImageSource:
    """Open an image file (or a DICOM folder) without reading its pixels.

    Args:
        path: a PNG, JPEG, TIFF (OME-TIFF, SVS...), vendor slide (:data:`SUPPORTED_SUFFIXES`) or
            DICOM whole-slide image.
        pixel_size_um: micrometres per pixel of level 0; overrides the file's metadata.
        backend: one of :data:`BACKENDS` to force it; None (or ``"auto"``) picks (module
            docstring), or takes the environment variable ``HISTOVIEW_IMAGE_BACKEND``.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image,
            claims data it does not hold, or is too small to analyse.
    """
    path = Path(path)
    if pixel_size_um is not None and not (pixel_size_um > 0 and np.isfinite(pixel_size_um)):
        raise ValueError(
            f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
        )
    backend = (backend or os.environ.get("HISTOVIEW_IMAGE_BACKEND") or "auto").lower()
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown image backend {backend!r}; one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise ImageReadError(path, "file not found")
    src = ImageSource(path, **_open_with_backend(path, backend))
    h, w = src.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        src.close()
        raise ImageReadError(
            path, f"image is {h} x {w} pixels; histoview needs at least {MIN_SIZE} x {MIN_SIZE}"
        )
    if pixel_size_um is not None:
        src.set_pixel_size(pixel_size_um)
    return src


def _open_with_backend(path: Path, backend: str) -> dict:
    """The keyword arguments of :class:`ImageSource` from the backend that reads ``path``."""
    from histoview.io import openslide_source as vendor

    if backend == "wsidicom" or (backend == "auto" and vendor.is_dicom(path)):
        return vendor.open_wsidicom(path)
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if backend == "openslide" or (
        backend == "auto" and path.suffix.lower() in vendor.OPENSLIDE_SUFFIXES
    ):
        return vendor.open_openslide(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    is_tiff = magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    is_plain = magic.startswith(b"\x89PNG") or magic[:3] == b"\xff\xd8\xff"
    if is_tiff and backend in ("auto", "tifffile"):
        from histoview.io.tiff_source import open_tiff

        detected = vendor.openslide_detects(path) if backend == "auto" else None
        if detected in vendor.OPENSLIDE_TIFF_FORMATS:  # tifffile would draw it wrongly
            return vendor.open_openslide(path)
        try:
            return open_tiff(path, size)
        except ImageReadError as exc:
            if detected is None or not vendor.openslide_can_show(path):
                raise
            try:  # a TIFF OpenSlide knows: let it try; its failure says less than tifffile's
                return vendor.open_openslide(path)
            except ImageReadError as other:
                raise exc from other
    if is_plain and backend in ("auto", "pillow"):
        from histoview.io.plain_image import decode_plain

        arr, cal, note = decode_plain(path)
        fmt = path.suffix.lower().lstrip(".")
        return dict(arrays=[arr], calibration=cal, fmt=fmt, image_note=note, backend="pillow")
    if backend == "auto" and vendor.openslide_detects(path):
        return vendor.open_openslide(path)
    kind = "text" if _looks_like_text(path) else "unknown binary data"
    what = "a PNG, JPEG or TIFF image" if backend == "auto" else f"an image {backend} reads"
    raise ImageReadError(path, f"not {what} (content is {kind}, starts with {magic[:8]!r})")


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_rgb(
    path: str | os.PathLike, *, level: int = 0, pixel_size_um: float | None = None
) -> tuple[np.ndarray, ImageSource]:
    """Read a whole level as (H, W, 3) uint8 RGB for a model; returns ``(rgb, source)`` (source
    closed). Refuses anisotropic pixels (:meth:`ImageSource.check_square_pixels`)."""
    with open_image(path, pixel_size_um=pixel_size_um) as src:
        src.check_square_pixels()
        return to_rgb8(src.read_level(level)), src
