"""The OpenSlide and wsidicom backends of :func:`histoview.io.image.open_image`.

**OpenSlide** (Goode et al., "OpenSlide: A vendor-neutral software foundation for digital
pathology", J Pathol Inform 2013), through ``openslide-python`` and the ``openslide-bin`` wheel
(no system library), reads the vendor formats tifffile cannot: 3DHISTECH MIRAX (.mrxs),
Hamamatsu (.vms, .vmu, .ndpi), Ventana (.bif), Leica (.scn), Sakura (.svslide), Philips TIFF and
generic tiled TIFFs. Each level is an :class:`OpenSlideLevel`, an array-like of shape
(height, width, 3) uint8 whose ``[r0:r1, c0:c1]`` slicing calls ``OpenSlide.read_region`` at
that level (RGBA composited on white: transparent pixels are outside the scanned area, glass),
so :class:`~histoview.io.image.ImageSource` reads, resamples (``read_rect``) and shows it as it
does a TIFF. Pixel size from ``openslide.mpp-x`` / ``openslide.mpp-y`` under the trusted-inputs
rules of :mod:`histoview.io.pixel_size` (outside the plausible range, or derived by OpenSlide from
the screen/print resolution tags of a generic TIFF: unknown, never invented); objective power from
``openslide.objective-power``. OpenSlide takes locations in level-0 pixels and divides by its
downsample, so at a level whose downsample is not a whole number (a side that did not halve
evenly: 2500 -> 313 is 7.99) it interpolates a shift of under 0.5 / downsample pixels; tifffile
reads such levels as stored. After an OpenSlide error the library refuses every later call on
that handle, so a failed read reopens the slide (a corrupt tile costs one
:class:`~histoview.io.errors.ImageReadError`, not the rest of the run).

**wsidicom** (DICOM whole-slide images, a folder of instances or one of its .dcm files) is used
where installed (``pip install wsidicom``); without it, OpenSlide's DICOM driver reads what it
detects, and anything else is refused saying so. Levels read through ``WsiDicom.read_region``
at each level's own pixel grid; the pixel size is the base level's ``mpp``.

Neither opens anything shared between processes: each worker calls ``open_image`` itself.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.pixel_size import (
    _TIFF_UNITS,
    PixelCalibration,
    _from_resolution,
    _plausible,
)

#: file suffixes that only OpenSlide reads correctly (vendor formats).
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".bif", ".scn", ".ndpi", ".svslide")
#: OpenSlide's names of TIFF-based formats tifffile reads but draws wrongly (overlapping or
#: sparse tiles, several scanned regions): these TIFFs go to OpenSlide whatever their suffix.
OPENSLIDE_TIFF_FORMATS = ("hamamatsu", "leica", "philips", "trestle", "ventana")
#: DICOM whole-slide instances (read through wsidicom, else OpenSlide's DICOM driver).
DICOM_SUFFIXES = (".dcm",)
_INSTALL = "pip install openslide-python openslide-bin"


def openslide_detects(path: Path) -> str | None:
    """OpenSlide's name for the file's format (``"aperio"``, ``"mirax"``, ``"generic-tiff"``...),
    or None when OpenSlide is not installed or does not read it."""
    try:
        import openslide
    except ImportError:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # an unreadable file: not an OpenSlide format
        return None


class _Slide:
    """One OpenSlide handle, shared by the levels of one source; reopened after an error."""

    def __init__(self, path: Path):
        import openslide

        self.path, self._openslide = path, openslide
        self._lock = threading.Lock()
        self.handle = openslide.OpenSlide(str(path))

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        handle = self.handle
        try:
            return handle.read_region(location, level, size)
        except self._openslide.OpenSlideError as exc:
            with self._lock:  # the handle now refuses every call: start a fresh one
                if self.handle is handle:
                    handle.close()
                    self.handle = self._openslide.OpenSlide(str(self.path))
            # the viewer reads levels directly (napari's slicing), not through read_rect: say
            # which file, as OpenSlide's own message does not
            raise ImageReadError(
                self.path,
                f"OpenSlide cannot read level {level} at {tuple(location)} (the file may be "
                f"truncated or damaged): {exc}",
            ) from exc

    def close(self) -> None:
        self.handle.close()


class OpenSlideLevel:
    """One OpenSlide level as a lazy (height, width, 3) uint8 array: integer and slice keys
    (any step) read only the pixels under them; ``np.asarray(level)`` reads the whole level."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, slide: _Slide, level: int, downsample: float, shape: tuple[int, int]):
        self._slide, self._level, self._downsample = slide, level, downsample
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self):
        return ("histoview.OpenSlideLevel", str(self._slide.path), self._level, self.shape)

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3:
            raise IndexError(f"too many indices for an array of shape {self.shape}")
        spans, picks = [], []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, slice):
                idx = range(*k.indices(n))
                lo, hi = (min(idx), max(idx) + 1) if len(idx) else (0, 0)
                spans.append((lo, hi))
                picks.append(slice(None) if idx.step == 1 else np.asarray(idx) - lo)
            else:
                i = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for size {n}")
                spans.append((i, i + 1))
                picks.append(0)
        (r0, r1), (c0, c1) = spans
        block = self.read(r0, c0, r1 - r0, c1 - c0)[:, picks[1]]
        return block[picks[0]][..., key[2]]

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Pixels rows ``row:row+height``, columns ``col:col+width`` of this level, RGB."""
        if height <= 0 or width <= 0:
            return np.zeros((max(height, 0), max(width, 0), 3), np.uint8)
        d = self._downsample  # OpenSlide takes the location in level-0 pixels
        location = (int(round(col * d)), int(round(row * d)))
        image = self._slide.read(location, self._level, (int(width), int(height)))
        if image.getchannel("A").getextrema()[0] == 255:  # all scanned: 4x faster than numpy
            return np.asarray(image.convert("RGB"))
        return composite_on_white(np.asarray(image))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 RGBA (not premultiplied, as openslide-python gives it) -> RGB on white."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def openslide_calibration(props) -> PixelCalibration:
    """The pixel size and objective power OpenSlide's properties state, under the trusted-inputs
    rules (module docstring)."""
    power = _number(props.get("openslide.objective-power"))
    mpp_x, mpp_y = _number(props.get("openslide.mpp-x")), _number(props.get("openslide.mpp-y"))
    if mpp_x is None and mpp_y is None:
        return PixelCalibration(objective_power=power)
    if mpp_x is None or mpp_y is None:
        mpp_x = mpp_y = mpp_x or mpp_y
    # libtiff spells the units the American way; histoview's TIFF rules name them in British
    unit, um_per_unit = _TIFF_UNITS.get(
        {"inch": 2, "centimeter": 3}.get(str(props.get("tiff.ResolutionUnit", "")).lower(), 0),
        (None, None),
    )
    res_x, res_y = _number(props.get("tiff.XResolution")), _number(props.get("tiff.YResolution"))
    if unit and res_x and math.isclose(mpp_x, um_per_unit / res_x, rel_tol=1e-3):
        # OpenSlide took it from the resolution tags: judge those as histoview does a TIFF's
        what = "TIFF resolution tags (through OpenSlide)"
        yx, note = _from_resolution(res_x, res_y or res_x, unit, um_per_unit, what)
        origin = f"TIFF resolution tags (per {unit}, through OpenSlide)"
    else:
        yx, note = _plausible(mpp_y, mpp_x, "OpenSlide mpp-x/mpp-y")
        origin = "OpenSlide mpp-x/mpp-y"
    return PixelCalibration(yx, origin if yx else None, note, power)


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def open_openslide(path: Path) -> dict:
    """Open ``path`` through OpenSlide: the keyword arguments of
    :class:`~histoview.io.image.ImageSource` (``arrays``, ``calibration``, ``fmt``, ``closer``,
    ``backend``).

    Raises:
        ImageReadError: OpenSlide is not installed, does not read the file, or the file is
            broken.
    """
    try:
        import openslide
    except ImportError as exc:
        raise ImageReadError(
            path, f"this format is read through OpenSlide, which is not installed: {_INSTALL}"
        ) from exc
    try:
        slide = _Slide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise ImageReadError(path, "not a slide format OpenSlide reads") from exc
    except Exception as exc:  # OpenSlideError and friends: a broken or incomplete slide
        raise ImageReadError(path, f"OpenSlide cannot open it ({exc})") from exc
    h = slide.handle
    try:
        arrays = [
            OpenSlideLevel(slide, i, float(h.level_downsamples[i]), dims[::-1])
            for i, dims in enumerate(h.level_dimensions)
        ]
        props = dict(h.properties)
        vendor = props.get("openslide.vendor") or openslide.OpenSlide.detect_format(str(path))
        return dict(
            arrays=arrays,
            calibration=openslide_calibration(props),
            fmt=str(vendor or "openslide"),
            closer=slide.close,
            backend="openslide",
        )
    except Exception as exc:
        slide.close()
        raise ImageReadError(path, f"OpenSlide cannot describe it ({exc})") from exc


def is_dicom(path: Path) -> bool:
    """A DICOM file (.dcm, or the ``DICM`` mark at byte 128) or a folder holding .dcm files."""
    if path.is_dir():
        return any(p.suffix.lower() in DICOM_SUFFIXES for p in path.iterdir())
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


class WsiDicomLevel(OpenSlideLevel):
    """One wsidicom pyramid level as a lazy (height, width, 3) uint8 array (its own pixels)."""

    def __init__(self, wsi, level, shape: tuple[int, int], path: Path):
        self._wsi, self._wsi_level, self._path = wsi, level, path
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.size = int(np.prod(self.shape))

    def __dask_tokenize__(self):
        return ("histoview.WsiDicomLevel", str(self._path), self._wsi_level, self.shape)

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        if height <= 0 or width <= 0:
            return np.zeros((max(height, 0), max(width, 0), 3), np.uint8)
        image = self._wsi.read_region((int(col), int(row)), self._wsi_level, (width, height))
        from histoview.io.rgb import to_rgb8

        return to_rgb8(np.asarray(image))


def open_wsidicom(path: Path) -> dict:
    """Open a DICOM whole-slide image (a folder, or one .dcm file of its folder) through
    wsidicom: the keyword arguments of :class:`~histoview.io.image.ImageSource`.

    Raises:
        ImageReadError: wsidicom is not installed, or the files hold no readable WSI pyramid.
    """
    try:
        from wsidicom import WsiDicom
    except ImportError as exc:
        first = min(path.glob("*.dcm"), default=None) if path.is_dir() else path
        if first is not None and openslide_detects(first) == "dicom":
            return open_openslide(first)  # OpenSlide 4 reads DICOM WSI too
        raise ImageReadError(
            path,
            "is a DICOM image; histoview reads DICOM whole-slide images through wsidicom, "
            "which is not installed: pip install wsidicom",
        ) from exc
    folder = path if path.is_dir() else path.parent
    try:
        wsi = WsiDicom.open(folder)
    except Exception as exc:
        raise ImageReadError(path, f"wsidicom cannot open it ({exc})") from exc
    try:
        levels = list(wsi.levels)
        arrays = [
            WsiDicomLevel(wsi, lv.level, (lv.size.height, lv.size.width), path) for lv in levels
        ]
        mpp = wsi.mpp  # of the base level, um/px (width, height)
        yx, note = _plausible(float(mpp.height), float(mpp.width), "DICOM PixelSpacing")
        calibration = PixelCalibration(yx, "DICOM PixelSpacing" if yx else None, note)
        return dict(
            arrays=arrays,
            calibration=calibration,
            fmt="dicom",
            closer=wsi.close,
            backend="wsidicom",
        )
    except Exception as exc:
        wsi.close()
        raise ImageReadError(path, f"wsidicom cannot describe it ({exc})") from exc


def openslide_can_show(path: Path) -> bool:
    """Whether OpenSlide's 8-bit RGBA view of this TIFF would be its real pixels: not for float,
    16-bit or multi-channel data (a map's channels would come back as a picture)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            return page.dtype == np.uint8 and page.samplesperpixel in (1, 3, 4) and not tf.is_ome
    except Exception:  # noqa: BLE001 - tifffile cannot even parse it: let OpenSlide try
        return True
