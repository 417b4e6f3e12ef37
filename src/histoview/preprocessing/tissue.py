"""Where the tissue is on a slide: a fast mask at low resolution that decides which tiles exist.

After CLAM (Lu et al., "Data-efficient and weakly supervised computational pathology on
whole-slide images", Nature Biomedical Engineering 2021: saturation threshold, closing, area
filters) and TIAToolbox's ``MorphologicalMasker`` (Pocock et al., Communications Medicine
2022: Otsu threshold, minimum region size). :func:`detect_tissue` reads the slide once at
``pixel_size_um`` (8 um/px by default: a 50,000 x 50,000 slide at 0.25 um/px becomes a
1,563 x 1,563 image, and a 16 um nucleus-free gap between fragments is still two pixels) through
:meth:`~histoview.io.image.ImageSource.read_rect`, and :func:`tissue_mask_from_rgb` makes the
mask:

1. **Features** of each RGB pixel: HSV saturation ``S = (max - min) / max`` (0 for black) and
   optical density summed over the channels, ``OD = sum_c -log10((I_c + 1) / 256)`` (Beer-Lambert:
   proportional to the amount of stain; glass at I = 240 has OD 0.08).
2. **Artefacts** (``exclude_artifacts=True``) are never tissue: *black* pixels (max channel <
   :data:`DARK_MAX` = 50: scanner borders, black ink; averaged over 8 um, even dense nuclei stay
   brighter), *grey* pixels (S < 0.05 with OD > 0.6: shadows, dust, out-of-focus debris, which are
   dark but not stained), and *green or blue ink* (G - R > :data:`PEN_GREEN_EXCESS` = 15 of 255:
   haematoxylin, eosin and DAB all absorb green at least as much as red, so in stained tissue
   R >= G, and more so at 8 um/px, where every pixel mixes nuclei with eosin-stained stroma;
   green and most blue inks have G well above R). Red ink looks like eosin and is not
   recognised.
3. **Threshold**, after a Gaussian smoothing of one mask pixel (noise, JPEG blocks; artefact
   pixels left out of it):
   ``method="otsu"`` (default): Otsu's threshold (Otsu, "A threshold selection method from
   gray-level histograms", IEEE SMC 1979) on the saturation, clamped to
   :data:`OTSU_SATURATION_RANGE` (0.07-0.25): the floor keeps noisy blank glass empty (its Otsu
   threshold splits noise; 0.07 is the glass rule of :mod:`histoview.preprocessing.patches`), the
   ceiling keeps a slide that is nearly all tissue from being split between eosin and
   haematoxylin. Saturation ignores the glass's brightness (scanners differ) and black borders.
   ``method="od"``: OD above ``threshold`` (default :data:`DEFAULT_OD_THRESHOLD` = 0.2: glass down
   to I ~ 217, HSV value 0.85, stays below it); it also keeps unsaturated (e.g. grey-stained or
   faded) tissue that saturation misses. ``threshold`` overrides either default.
4. **Clean-up** (scipy.ndimage): a closing with a disk of :data:`CLOSING_UM` (16 um) radius
   joins tissue split by thin gaps and tears; holes (4-connected background regions not
   touching the border) up to ``max_hole_um2`` (default 0.25 mm^2: ducts, vessels, fat lobules;
   None fills every hole) are filled; 8-connected objects below ``min_area_um2`` are removed.
   The default :data:`DEFAULT_MIN_AREA_UM2` = 20,000 um^2 (a 160 um disc, 1.6 tiles of
   224 px at 0.5 um/px) removes dust and debris (mostly < 100 um across) but keeps small
   biopsy fragments (0.2-1 mm). On an image smaller than 20 times that area, the minimum is
   5 % of the image's area, so a small field (a BreakHis image) is not emptied.

No tissue raises :class:`NoTissueError`. The result, a
:class:`~histoview.preprocessing.tissue_mask.TissueMask`, says how much of any level-0 rectangle
is tissue in constant time and which tiles of a grid have tissue.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from histoview.preprocessing.tissue_mask import TissueMask

__all__ = [
    "CLOSING_UM",
    "DARK_MAX",
    "DEFAULT_MIN_AREA_UM2",
    "DEFAULT_OD_THRESHOLD",
    "DEFAULT_PIXEL_SIZE_UM",
    "NoTissueError",
    "OTSU_SATURATION_RANGE",
    "PEN_GREEN_EXCESS",
    "TissueMask",
    "detect_tissue",
    "tissue_features",
    "tissue_mask_from_rgb",
]

#: the mask's default pixel size, micrometres per pixel
DEFAULT_PIXEL_SIZE_UM = 8.0
#: objects smaller than this (um^2) are not tissue (module docstring)
DEFAULT_MIN_AREA_UM2 = 20_000.0
#: holes up to this (um^2) are filled
DEFAULT_MAX_HOLE_UM2 = 250_000.0
#: summed optical density above which a pixel is tissue (``method="od"``)
DEFAULT_OD_THRESHOLD = 0.2
#: the Otsu threshold on saturation is clamped to this range
OTSU_SATURATION_RANGE = (0.07, 0.25)
#: radius of the closing disk, micrometres
CLOSING_UM = 16.0
#: pixels whose brightest channel is below this (0-255) are black artefacts
DARK_MAX = 50
#: pixels whose green exceeds their red by more than this (0-255) are green or blue ink
PEN_GREEN_EXCESS = 15
#: grey artefacts: saturation below the first, summed OD above the second
GREY_ARTEFACT = (0.05, 0.6)
#: the mask gets at least this many pixels along its shorter side (finer than asked if needed)
MIN_MASK_SIDE = 64
#: largest window (bytes) read from the slide at once
BAND_BYTES = 64 * 2**20
METHODS = ("otsu", "od")


class NoTissueError(ValueError):
    """No tissue was found; the message names the file and how the mask was made."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{path if path is not None else 'the image'}: {problem}")


def tissue_features(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(saturation, od)`` of an (h, w, 3) uint8 RGB image: HSV saturation 0..1 (0 where the
    pixel is black) and optical density summed over the channels (module docstring), float32."""
    rgb = _check_rgb(rgb)
    hi = rgb.max(axis=2).astype(np.float32)
    lo = rgb.min(axis=2).astype(np.float32)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    table = (-np.log10((np.arange(256, dtype=np.float64) + 1) / 256)).astype(np.float32)
    od = table[rgb[..., 0]] + table[rgb[..., 1]] + table[rgb[..., 2]]
    return sat, od


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    pixel_size_um: float,
    *,
    method: str = "otsu",
    threshold: float | None = None,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    max_hole_um2: float | None = DEFAULT_MAX_HOLE_UM2,
    exclude_artifacts: bool = True,
    level0_pixel_size_um: float | None = None,
    level0_shape: tuple[int, int] | None = None,
    path: str | os.PathLike | None = None,
) -> TissueMask:
    """The tissue mask of an (h, w, 3) uint8 RGB image at ``pixel_size_um`` (module docstring).

    Args:
        rgb: the image (a slide read at low resolution, or a small image whole).
        pixel_size_um: micrometres per pixel of ``rgb``.
        method: ``"otsu"`` (saturation, Otsu) or ``"od"`` (optical density).
        threshold: a fixed threshold instead of the method's default (saturation 0..1, or
            summed OD).
        min_area_um2: smaller objects are removed.
        max_hole_um2: holes up to this area are filled (None: every hole; 0: none).
        exclude_artifacts: black, grey and green/blue-ink pixels are never tissue.
        level0_pixel_size_um, level0_shape: the slide ``rgb`` was read from (default: ``rgb``
            itself).
        path: the slide's file, for messages.

    Raises:
        NoTissueError: nothing is left after the clean-up.
        ValueError: bad arguments.
    """
    from scipy import ndimage as ndi

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    p = float(pixel_size_um)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(
            f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
        )
    if not (min_area_um2 >= 0):
        raise ValueError(f"min_area_um2 must be >= 0, got {min_area_um2}")
    rgb = _check_rgb(rgb)
    h, w = rgb.shape[:2]
    sat, od = tissue_features(rgb)
    valid = np.ones((h, w), bool)
    if exclude_artifacts:
        r, g = rgb[..., 0].astype(np.int16), rgb[..., 1].astype(np.int16)
        valid &= rgb.max(axis=2) >= DARK_MAX
        valid &= ~((sat < GREY_ARTEFACT[0]) & (od > GREY_ARTEFACT[1]))
        valid &= g - r <= PEN_GREEN_EXCESS
    feature = sat if method == "otsu" else od
    if min(h, w) >= 3:  # normalised convolution: artefacts do not bleed into their neighbours
        weight = ndi.gaussian_filter(valid.astype(np.float32), sigma=1.0, mode="nearest")
        feature = ndi.gaussian_filter(np.where(valid, feature, 0), sigma=1.0, mode="nearest")
        feature = np.divide(feature, weight, out=np.zeros_like(feature), where=weight > 1e-3)
    if threshold is not None:
        t = float(threshold)
    elif method == "od":
        t = DEFAULT_OD_THRESHOLD
    else:
        t = _otsu(feature[valid])
    mask = (feature > t) & valid

    radius = max(1, round(CLOSING_UM / p))
    pad = radius + 1
    disk = _disk(radius)
    mask = ndi.binary_closing(np.pad(mask, pad), structure=disk)[pad:-pad, pad:-pad]
    pixel_area = p * p
    if max_hole_um2 is None or max_hole_um2 > 0:
        mask = _fill_holes(mask, None if max_hole_um2 is None else max_hole_um2 / pixel_area)
    min_area = min(float(min_area_um2), 0.05 * h * w * pixel_area)
    mask = _remove_small(mask, min_area / pixel_area)

    if level0_pixel_size_um is None:
        level0_pixel_size_um, level0_shape = p, (h, w)
    elif level0_shape is None:
        raise ValueError("give level0_shape with level0_pixel_size_um")
    if not mask.any():
        what = f"saturation above {t:.3g}" if method == "otsu" else f"optical density above {t:.3g}"
        raise NoTissueError(
            path,
            f"no tissue found ({what} at {p:.3g} um/px, objects of at least "
            f"{min_area:,.0f} um^2): a blank slide or glass only? If there is faint tissue, try "
            "method='od' or a lower threshold",
        )
    return TissueMask(
        mask,
        pixel_size_um=p,
        level0_pixel_size_um=float(level0_pixel_size_um),
        level0_shape=tuple(level0_shape),
        method=method,
        threshold=t,
        path=None if path is None else str(path),
    )


def detect_tissue(
    src,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    method: str = "otsu",
    threshold: float | None = None,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    max_hole_um2: float | None = DEFAULT_MAX_HOLE_UM2,
    exclude_artifacts: bool = True,
    slide_pixel_size_um: float | None = None,
) -> TissueMask:
    """The tissue mask of a slide, read once at ``pixel_size_um`` (module docstring).

    The slide is read with :meth:`~histoview.io.image.ImageSource.read_rect` (from the coarsest
    pyramid level fine enough, area-averaged) in bands of at most :data:`BAND_BYTES` of that
    level, so a slide without a pyramid is not read whole at once. Where ``pixel_size_um`` would
    give a mask with fewer than :data:`MIN_MASK_SIDE` pixels along a side, or is finer than
    level 0, a finer pixel size (at most level 0's) is used: :attr:`TissueMask.pixel_size_um`
    says which.

    Args:
        src: an :class:`~histoview.io.image.ImageSource` or an image file's path.
        pixel_size_um: the mask's pixel size, micrometres per pixel.
        method, threshold, min_area_um2, max_hole_um2, exclude_artifacts: as
            :func:`tissue_mask_from_rgb`.
        slide_pixel_size_um: level 0's pixel size when the file has none (or a wrong one), as
            ``open_image(path, pixel_size_um=...)`` takes it; the slide is opened again with it.

    Raises:
        ImageReadError: the slide's pixel size is unknown (the trusted-inputs policy: give
            ``slide_pixel_size_um``), or its pixels cannot be read.
        NoTissueError: no tissue (the message names the file).
    """
    from histoview.io.image import ImageSource, open_image

    settings = (pixel_size_um, method, threshold, min_area_um2, max_hole_um2, exclude_artifacts)
    if isinstance(src, (str, os.PathLike)):
        path = src
    elif not isinstance(src, ImageSource):
        raise TypeError(f"src must be an ImageSource or a path, not {type(src).__name__}")
    elif slide_pixel_size_um is None or src.pixel_size_um == float(slide_pixel_size_um):
        return _detect(src, *settings)
    else:  # the caller's source keeps its own pixel size: read a copy with the given one
        path = src.path
    with open_image(path, pixel_size_um=slide_pixel_size_um) as opened:
        return _detect(opened, *settings)


def _detect(src, pixel_size_um, method, threshold, min_area_um2, max_hole_um2, exclude):
    from histoview.io.resolution import level0_pixel_size, level_scale

    p0 = level0_pixel_size(src)  # ImageReadError when unknown or not square
    height, width = src.shape[:2]
    p = float(pixel_size_um)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(
            f"pixel size must be a positive number of micrometres, got {pixel_size_um}"
        )
    p = max(p0, min(p, min(height, width) * p0 / MIN_MASK_SIDE))
    f = p / p0
    mh, mw = math.ceil(height / f - 1e-9), math.ceil(width / f - 1e-9)
    level = src.level_for_pixel_size(p)
    level_p = p0 * max(level_scale(src, level))
    bytes_per_row = (p / level_p + 2) * src.levels[level].width * 3
    band = max(1, int(BAND_BYTES // bytes_per_row))
    rgb = np.empty((mh, mw, 3), np.uint8)
    for i0 in range(0, mh, band):
        n = min(band, mh - i0)
        rgb[i0 : i0 + n] = src.read_rect((i0 * f, 0.0), (n, mw), p)
    return tissue_mask_from_rgb(
        rgb,
        p,
        method=method,
        threshold=threshold,
        min_area_um2=min_area_um2,
        max_hole_um2=max_hole_um2,
        exclude_artifacts=exclude,
        level0_pixel_size_um=p0,
        level0_shape=(height, width),
        path=Path(src.path),
    )


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"expected an (h, w, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return rgb


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of saturation values, clamped to :data:`OTSU_SATURATION_RANGE`."""
    lo, hi = OTSU_SATURATION_RANGE
    if values.size == 0 or float(values.max() - values.min()) < 1e-6:
        return lo
    from skimage.filters import threshold_otsu

    return float(min(max(threshold_otsu(values), lo), hi))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius + radius  # rounder than <= r^2 for small radii


def _fill_holes(mask: np.ndarray, max_pixels: float | None) -> np.ndarray:
    """``mask`` with its holes (4-connected background not touching the border) of at most
    ``max_pixels`` pixels filled (all holes when None)."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = np.ones(n + 1, bool)
    fill[border] = False
    fill[0] = False
    if max_pixels is not None:
        fill &= np.bincount(labels.ravel(), minlength=n + 1) <= max_pixels
    return mask | fill[labels]


def _remove_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` without its 8-connected objects of fewer than ``min_pixels`` pixels."""
    from scipy import ndimage as ndi

    if min_pixels <= 1:
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_pixels
    keep[0] = False
    return keep[labels]
