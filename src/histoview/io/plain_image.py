"""PNG and JPEG files (BreakHis), decoded whole by Pillow (:func:`decode_plain`), for
:func:`histoview.io.image.open_image`: the EXIF orientation applied, palette / CMYK / YCbCr
converted to RGB, the pixel size from PNG ``pHYs`` or JPEG JFIF density
(:func:`histoview.io.pixel_size.plain_calibration`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.pixel_size import PixelCalibration, join_notes, plain_calibration

#: PNG/JPEG files are decoded whole; refuse ones whose header claims more pixels than this.
MAX_PLAIN_PIXELS = 400_000_000


def decode_plain(path: Path) -> tuple[np.ndarray, PixelCalibration, str | None]:
    """Decode a PNG/JPEG whole: ``(array, calibration, image_note)`` (:func:`_pil_to_array`
    says how the array is shown; the calibration follows an EXIF transpose). Raises
    :class:`ImageReadError` for files Pillow cannot decode or that claim more than
    :data:`MAX_PLAIN_PIXELS` pixels."""
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
            calibration = plain_calibration(im)
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
    return arr, calibration, image_note


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
    return arr, join_notes(notes), transposed
