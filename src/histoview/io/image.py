"""Open histology images and read regions of any pyramid level, lazily.

:func:`open_image` takes PNG/JPEG (BreakHis), plain TIFF (BACH), BigTIFF,
OME-TIFF and tiled pyramidal TIFF (including Aperio SVS-style files) and
returns an :class:`ImageSource`: its pyramid levels and shapes, its pixel size
in micrometres per pixel, and :meth:`ImageSource.read_region` for any region
of any level. TIFFs are read through tifffile's zarr store, tile by tile, so a
50,000 x 50,000 slide opens in milliseconds and panning reads only what is
shown.

Pixel size comes, in this order, from the caller's override, OME-XML
``PhysicalSizeX``, an Aperio ``MPP =`` entry in the image description, or the
TIFF resolution tags (when their unit is inch or centimetre). PNG/JPEG have
no reliable pixel size; it is ``None`` unless given.

Any file that cannot be read raises :class:`ImageReadError`, whose message
starts with the file name and says what is wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")

#: smallest image (height and width, pixels) histoview will analyse.
MIN_SIZE = 8
#: PNG/JPEG files are decoded whole; refuse ones whose header claims more pixels than this.
MAX_PLAIN_PIXELS = 400_000_000


class ImageReadError(ValueError):
    """A file histoview cannot read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


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
    or 4 (RGBA); palette images come back as RGB. Close it (or use ``with``)
    to release the file.
    """

    def __init__(
        self,
        path: Path,
        arrays: list,
        *,
        pixel_size_um: float | None,
        pixel_size_source: str | None,
        fmt: str,
        closer=None,
        colormap: np.ndarray | None = None,
    ):
        self.path = path
        # Level arrays, or zero-argument callables that open them on first use (zarr stores),
        # so describing a file does not import or build zarr.
        self._arrays = list(arrays)
        self._closer = closer
        self._colormap = colormap
        self.pixel_size_um = pixel_size_um
        self.pixel_size_source = pixel_size_source
        self.format = fmt
        shapes = [tuple(a.shape) for a in arrays]
        self._dtype = np.dtype(np.uint8) if colormap is not None else np.dtype(arrays[0].dtype)
        samples = (3,) if colormap is not None else shapes[0][2:]
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

    def level_pixel_size(self, level: int) -> float | None:
        if self.pixel_size_um is None:
            return None
        return self.pixel_size_um * self.levels[level].downsample

    def describe(self) -> dict:
        """Plain-data summary (what ``histoview info`` prints)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "dtype": str(self.dtype),
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_source": self.pixel_size_source,
            "levels": [{"shape": list(lv.shape), "downsample": round(lv.downsample, 4)} for lv in self.levels],
        }

    # -- reading -------------------------------------------------------------------------------
    def level_array(self, level: int = 0):
        """The lazy array of one level (zarr for TIFF, numpy for PNG/JPEG); index it to read."""
        self._check_level(level)
        array = self._arrays[level]
        if isinstance(array, _LazyLevel):
            array = self._arrays[level] = array.open()
        if self._colormap is not None:
            return _PaletteArray(array, self._colormap)
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
            raise ValueError(f"region {origin} + {size} lies outside level {level} of shape {lv.shape[:2]}")
        try:
            return np.asarray(self.level_array(level)[r0:r1, c0:c1])
        except Exception as exc:  # decoding errors from tifffile/imagecodecs
            raise ImageReadError(self.path, f"cannot decode pixels of level {level} ({exc})") from exc

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
            raise IndexError(f"{self.path}: level {level} does not exist (levels 0..{self.n_levels - 1})")

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
    """Shape and dtype of a TIFF pyramid level; ``open()`` makes its zarr array."""

    def __init__(self, tf, level: int, shape: tuple[int, ...], dtype):
        self._tf, self._level = tf, level
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def open(self):
        import zarr

        return zarr.open(self._tf.aszarr(series=0, level=self._level), mode="r")


class _PaletteArray:
    """Lazy view applying a TIFF palette (colormap) to index pixels on read."""

    def __init__(self, indices, colormap: np.ndarray):
        self._indices = indices
        self._cmap = colormap
        self.shape = (*indices.shape[:2], 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        idx = np.asarray(self._indices[key[:2] if isinstance(key, tuple) else key])
        return self._cmap[idx]

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out.astype(dtype) if dtype is not None else out


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
        raise ValueError(f"pixel size must be a positive number of micrometres, got {pixel_size_um}")
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
        raise ImageReadError(path, f"not a PNG, JPEG or TIFF image (content is {kind}, starts with {magic[:8]!r})")
    h, w = src.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        src.close()
        raise ImageReadError(path, f"image is {h} x {w} pixels; histoview needs at least {MIN_SIZE} x {MIN_SIZE}")
    if pixel_size_um is not None:
        src.pixel_size_um, src.pixel_size_source = float(pixel_size_um), "user"
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
                raise ImageReadError(path, f"header claims {w} x {h} pixels, too many for a PNG/JPEG; use a tiled TIFF")
            im.load()
            arr = _pil_to_array(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"header claims too many pixels for a PNG/JPEG ({exc}); use a tiled TIFF") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from exc
    return ImageSource(path, [arr], pixel_size_um=None, pixel_size_source=None, fmt=path.suffix.lower().lstrip("."))


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
    elif mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA"):
        pass
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if im.mode == "LA":
        arr = arr[..., 0]
    if im.mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr


def _open_tiff(path: Path, size: int) -> ImageSource:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for broken headers
        raise ImageReadError(path, f"not a readable TIFF ({exc})") from exc
    try:
        if not tf.series or not tf.pages:
            raise ImageReadError(path, "TIFF holds no image")
        series = tf.series[0]
        _check_tiff_data(path, series, size)
        page = series.levels[0].keyframe
        colormap = None
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
            cmap = np.asarray(page.colormap)
            colormap = (cmap.T >> 8 if cmap.max() > 255 else cmap.T).astype(np.uint8)
        arrays = []
        for i, lv in enumerate(series.levels):
            if lv.ndim > 3 or (lv.ndim == 3 and lv.shape[-1] not in (3, 4) and "S" not in lv.axes):
                raise ImageReadError(path, f"unsupported TIFF layout: axes {lv.axes} shape {lv.shape}")
            arrays.append(_LazyLevel(tf, i, lv.shape, lv.dtype))
        if len(arrays[0].shape) == 3 and arrays[0].shape[-1] not in (3, 4):
            raise ImageReadError(path, f"unsupported TIFF layout: {arrays[0].shape}")
        mpp, source = _tiff_pixel_size(tf, page)
        fmt = "ome-tiff" if tf.is_ome else ("svs" if tf.is_svs else ("bigtiff" if tf.is_bigtiff else "tiff"))
        return ImageSource(path, arrays, pixel_size_um=mpp, pixel_size_source=source, fmt=fmt,
                           closer=tf.close, colormap=colormap)
    except ImageReadError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise ImageReadError(path, f"cannot read TIFF structure ({type(exc).__name__}: {exc})") from exc


def _check_tiff_data(path: Path, series, size: int) -> None:
    """Refuse TIFFs whose strips/tiles point past the end of the file (truncated or fake headers)."""
    for lv in series.levels:
        for page in lv.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if len(offsets) == 0 or counts.sum() == 0:
                raise ImageReadError(path, f"TIFF header describes a {page.shape} image but holds no pixel data")
            expected = int(np.prod(page.chunked))
            if len(offsets) < expected:
                raise ImageReadError(
                    path,
                    f"TIFF header describes a {page.shape} image of {expected} strips/tiles "
                    f"but lists only {len(offsets)}",
                )
            if page.compression == 1 and counts.sum() < page.size * page.bitspersample // 8:
                raise ImageReadError(path, f"TIFF header describes a {page.shape} image but holds too few bytes")
            end = int((offsets + counts).max())
            if end > size:
                missing = int(((offsets + counts) > size).sum())
                raise ImageReadError(
                    path,
                    f"TIFF is truncated: {missing} of {len(offsets)} strips/tiles of a {page.shape} image "
                    f"end beyond the file's {size} bytes",
                )


def _tiff_pixel_size(tf, page) -> tuple[float | None, str | None]:
    if tf.is_ome and tf.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
            factor = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm")
            if factor is not None and float(m.group(1)) > 0:
                return float(m.group(1)) * factor, "ome"
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m and float(m.group(1)) > 0:
        return float(m.group(1)), "aperio"
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        num, den = tags["XResolution"].value
        per_unit = num / den if den else 0
        unit_um = {2: 25_400.0, 3: 10_000.0}.get(unit)
        if unit_um and per_unit > 1:  # 1 pixel per unit is a writer's placeholder
            return unit_um / per_unit, "tiff-resolution"
    return None, None


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


def read_rgb(path: str | os.PathLike, *, level: int = 0, pixel_size_um: float | None = None) -> tuple[np.ndarray, ImageSource]:
    """Read a whole level as (H, W, 3) uint8 RGB; returns ``(rgb, source)`` (source closed)."""
    with open_image(path, pixel_size_um=pixel_size_um) as src:
        return to_rgb8(src.read_level(level)), src
