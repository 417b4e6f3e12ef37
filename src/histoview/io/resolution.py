"""Read any rectangle of an image at a requested pixel size (micrometres per pixel).

What :meth:`histoview.io.image.ImageSource.read_rect` and
:meth:`~histoview.io.image.ImageSource.level_for_pixel_size` do, after TIAToolbox's
``WSIReader.read_rect(location, size, resolution, units="mpp")`` (Pocock et al., "TIAToolbox as
an end-to-end library for advanced tissue image analytics", Communications Medicine 2022): the
location is in level-0 ("baseline") pixels, the size in output pixels at the requested
resolution, the pixels come from the nearest finer pyramid level and are resampled to the exact
size. Unlike TIAToolbox, the location is (row, col) and size (height, width) as everywhere in
histoview, and a pixel size finer than level 0 is refused rather than interpolated.

**Level choice.** Level ``l`` has pixel size ``p0 * d_l``, with ``p0`` level 0's um/px and
``d_l`` its downsample. ``d_l`` is the level-0 / level shape ratio per axis, snapped to the
whole number ``n`` when the level's side is ``floor`` or ``ceil`` of ``side_0 / n`` (a 2x pyramid
of a 50,001-pixel side has 25,001 pixels at level 1: its downsample is 2, not 1.99996). The level
read is the coarsest with ``p0 * d_l <= p * 1.01`` (1 % slack for rounded metadata).

**Resampling.** Output pixel ``(i, j)`` covers level-0 rows ``[r + i f, r + (i + 1) f)`` and
columns ``[c + j f, c + (j + 1) f)``, ``f = p / p0``; in level pixels, divided by ``d_l``. Only
the level pixels under the rectangle are read (:meth:`~histoview.io.image.ImageSource.read_region`
decodes just the tiles under them), composited on white when RGBA and expanded to RGB when grey
(:func:`histoview.io.rgb.to_rgb8`), and resampled with Pillow's ``BOX`` filter over the exact
fractional source box: each output pixel is the mean of the level pixels whose centres lie in
its footprint, the exact area average for whole-number factors (0.25 -> 0.5 um/px is a 2 x 2
mean, done by Pillow's ``reduce`` when the factor is whole and the rectangle on the level's
grid). Deterministic (integer arithmetic in Pillow), with the GIL released. When the footprint
is the level's own pixel grid (factor 1, whole-pixel offset) the pixels are copied as read; when
the level is finer by less than 1 % (factor < 1) the resampling is bilinear.

**Borders.** Parts of the rectangle outside the image are ``pad`` (255 = white glass) before
resampling, so an output pixel straddling the edge averages the image and pad pixels under it.
"""

from __future__ import annotations

import math

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.rgb import to_rgb8

#: a level is fine enough when its pixel size is at most this times the requested one.
LEVEL_SLACK = 1.01


def level_scale(src, level: int) -> tuple[float, float]:
    """(y, x) level-0 pixels per pixel of ``level`` (module docstring: snapped to whole numbers)."""
    base, lv = src.levels[0], src.levels[level]
    out = []
    for n0, n in ((base.height, lv.height), (base.width, lv.width)):
        ratio = n0 / n
        whole = max(round(ratio), 1)
        out.append(float(whole) if n in (n0 // whole, -(-n0 // whole)) else ratio)
    return out[0], out[1]


def level0_pixel_size(src) -> float:
    """Level 0's (square) um/px; :class:`ImageReadError` when unknown or not square."""
    if src.pixel_size_um is not None:
        return src.pixel_size_um
    if src.pixel_size_yx is not None:
        src.check_square_pixels()  # raises: anisotropic
    raise ImageReadError(
        src.path,
        "pixel size unknown (the file states no trustworthy micrometres per pixel), so it "
        "cannot be read at a pixel size: give --pixel-size, or resolve it first "
        "(histoview.models.inputs.resolve_pixel_size, ImageSource.set_pixel_size)",
    )


def level_for_pixel_size(src, pixel_size_um: float) -> int:
    """The coarsest level whose pixel size is <= ``pixel_size_um`` * 1.01 (module docstring).

    Raises:
        ImageReadError: the pixel size of the image is unknown or not square.
        ValueError: ``pixel_size_um`` is not a positive number, or finer than level 0 by more
            than 1 %.
    """
    p = float(pixel_size_um)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(
            f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
        )
    p0 = level0_pixel_size(src)
    if p0 > p * LEVEL_SLACK:
        raise ValueError(
            f"{src.path}: {p:.4g} um/px is finer than the slide's level 0 ({p0:.4g} um/px); "
            "histoview does not invent detail: ask for a pixel size of at least "
            f"{p0:.4g} um/px"
        )
    best = 0
    for level in range(1, src.n_levels):
        sy, sx = level_scale(src, level)
        if p0 * max(sy, sx) <= p * LEVEL_SLACK:
            best = level
    return best


def read_rect(src, location, size, pixel_size_um: float, *, pad: int | tuple = 255) -> np.ndarray:
    """``size`` = (height, width) output pixels at ``pixel_size_um`` whose top-left corner is
    ``location`` = (row, col) in level-0 pixels (floats allowed), as uint8 (h, w, 3) RGB.

    Module docstring for the level choice, resampling and padding.

    Raises:
        ImageReadError: unknown or anisotropic pixel size; a tile that cannot be decoded;
            an image that is not grey, RGB or RGBA.
        ValueError: ``pixel_size_um`` finer than level 0 by more than 1 %; a size that is not
            two positive whole numbers; a rectangle wholly outside the image.
    """
    try:
        r, c = (float(v) for v in location)
        h, w = (int(v) for v in size)
        if (h, w) != tuple(float(v) for v in size):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"location must be (row, col) numbers and size (height, width) whole numbers, got "
            f"location={location!r}, size={size!r}"
        ) from None
    if h <= 0 or w <= 0 or not (math.isfinite(r) and math.isfinite(c)):
        raise ValueError(f"rectangle {location!r} + {size!r}: needs a finite location, size > 0")
    level = level_for_pixel_size(src, pixel_size_um)
    if not (len(src.shape) == 2 or src.shape[2] in (1, 3, 4)):
        raise ImageReadError(
            src.path, f"read_rect gives RGB; this image has {src.shape[2]} samples per pixel"
        )
    f = float(pixel_size_um) / level0_pixel_size(src)  # level-0 pixels per output pixel
    height0, width0 = src.shape[:2]
    r1, c1 = r + h * f, c + w * f
    if r1 <= 0 or c1 <= 0 or r >= height0 or c >= width0:
        raise ValueError(
            f"{src.path}: rectangle rows {r:.6g}..{r1:.6g}, columns {c:.6g}..{c1:.6g} (level-0 "
            f"pixels; {h} x {w} pixels at {float(pixel_size_um):.4g} um/px) lies wholly outside "
            f"the image ({height0} x {width0} pixels at level 0)"
        )
    src.last_level = level
    sy, sx = level_scale(src, level)
    y0, y1, x0, x1 = r / sy, r1 / sy, c / sx, c1 / sx  # the rectangle in level pixels
    iy0, ix0 = math.floor(y0), math.floor(x0)
    exact = _whole(y0) and _whole(x0) and abs(y1 - y0 - h) < 1e-6 and abs(x1 - x0 - w) < 1e-6
    if exact:  # the level's own grid: no resampling
        iy0, ix0 = round(y0), round(x0)
        iy1, ix1 = iy0 + h, ix0 + w
    else:
        iy1, ix1 = math.ceil(y1), math.ceil(x1)
    window = _read_window(src, level, iy0, ix0, iy1, ix1, pad)
    if exact:
        return _writable(window)
    from PIL import Image

    ky, kx = (y1 - y0) / h, (x1 - x0) / w
    box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    k = round(ky)
    if k >= 2 and abs(ky - k) < 1e-9 and abs(kx - k) < 1e-9 and _whole(box[0]) and _whole(box[1]):
        # a whole-number factor on the level's grid: Pillow's reduce, the k x k mean, 4x faster
        corner = (round(box[0]), round(box[1]))
        whole = (*corner, corner[0] + w * k, corner[1] + h * k)
        return _writable(np.asarray(Image.fromarray(window).reduce(k, box=whole)))
    resample = Image.Resampling.BOX if min(ky, kx) >= 1 - 1e-9 else Image.Resampling.BILINEAR
    return _writable(np.asarray(Image.fromarray(window).resize((w, h), resample, box=box)))


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy when it is read-only (a memory-mapped level, a Pillow buffer)."""
    return a if a.flags.writeable else a.copy()


def _whole(v: float) -> bool:
    return abs(v - round(v)) < 1e-6


def _read_window(src, level: int, iy0: int, ix0: int, iy1: int, ix1: int, pad) -> np.ndarray:
    """Level pixels rows ``iy0:iy1``, columns ``ix0:ix1`` as uint8 RGB, ``pad`` outside."""
    lv = src.levels[level]
    fill = np.asarray(pad)
    if fill.shape not in ((), (3,)) or not ((fill >= 0) & (fill <= 255)).all():
        raise ValueError(f"pad must be a grey value or an RGB triple in 0..255, got {pad!r}")
    ry0, rx0 = max(iy0, 0), max(ix0, 0)
    ry1, rx1 = min(iy1, lv.height), min(ix1, lv.width)
    inside = ry1 > ry0 and rx1 > rx0
    if inside and (ry0, rx0, ry1, rx1) == (iy0, ix0, iy1, ix1):
        return _rgb(src.read_region(level, (ry0, rx0), (ry1 - ry0, rx1 - rx0)))
    window = np.empty((iy1 - iy0, ix1 - ix0, 3), np.uint8)
    window[...] = fill.astype(np.uint8)
    if inside:
        block = _rgb(src.read_region(level, (ry0, rx0), (ry1 - ry0, rx1 - rx0)))
        window[ry0 - iy0 : ry1 - iy0, rx0 - ix0 : rx1 - ix0] = block
    return window


def _rgb(region: np.ndarray) -> np.ndarray:
    if region.dtype == np.uint8 and region.ndim == 3 and region.shape[2] == 3:
        return np.ascontiguousarray(region)  # as read (to_rgb8 would scale it to float first)
    if region.ndim == 3 and region.shape[2] == 1:  # grey with a samples axis
        region = region[..., 0]
    return to_rgb8(region)
