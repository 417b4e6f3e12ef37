"""Estimate an H&E image's pixel size (micrometres per pixel) from the size of its nuclei.

Many histology files carry no microscope calibration (PNG, JPEG, TIFFs whose resolution tags
are a 72 dpi screen default, see :mod:`histoview.io.image`). Nuclei have a typical physical
size, so their size in pixels tells the pixel size. :func:`estimate_pixel_size` measures it
in two steps, both in the haematoxylin channel (:func:`skimage.color.rgb2hed`):

1. **A guess-free start.** The scale-normalised Laplacian of Gaussian ``-s^2 lap(G_s * H)``
   responds most to a disc of radius ``r`` at ``s = r / sqrt(2)`` whatever ``r`` is
   (Lindeberg, "Feature detection with automatic scale selection", IJCV 1998). Its energy
   ``E(s) = mean(max(response, 0)^2)`` over the image, on 26 scales from 1.4 to 108 px
   (a quarter octave apart, on a 2x pyramid), peaks at the radius of the dominant dark blobs;
   :data:`SPECTRUM_RADIUS_UM` um divided by that radius in pixels is the start.
2. **Nuclei found by the detector, sized by their blob scale.** :func:`detect_nuclei` runs at
   the current guess; at each nucleus centre the scale where the response above is largest
   gives the nucleus's radius in pixels; :data:`NUCLEUS_RADIUS_UM` um divided by the 33rd
   percentile of those radii is the next guess, until the guess changes by less than 1 %;
   the estimate is then the guess the last detector run used, so the nuclei it measured are
   those detected at the estimate. (A low percentile: merged clusters and large tumour
   nuclei sit in the upper tail.)

Why not the detector's own outlines? The detector's size filters and seed spacing are set in
micrometres at the guessed pixel size, so the outlines follow the guess: on MoNuSeg tiles the
median segmented diameter in um changes only as (guess)^0.2 (from 4.4 um at 0.08 um/px to
7.7 um at 0.7 um/px), and iterating on it settles wherever it starts. The blob scale at a
nucleus centre does not depend on the guess (only which objects are measured does): measured
at the true pixel size x 0.6 ... x 1.6 the percentile moves as (guess)^-0.2 to -0.4, so the
iteration converges and a 10 % error in the calibration gives ~15 % in the estimate.

**Calibration** (``benchmarks/bench_pixel_size.py``), on the six MoNuSeg breast tiles
(Kumar et al., IEEE TMI 2017; 40X, 0.2456 um/px): the 33rd percentile of the nucleus blob
radius is 2.03-2.44 um per tile (mean 2.28), the energy peak 2.25-3.33 um (median 2.64);
leave-one-out, the estimates are off by -9 % to +22 % (rms 10 %). Nuclei differ in size between
tissues and lesions (tumour nuclei are larger than benign ones, lymphocytes smaller), so an
estimate carries a systematic error of about :data:`SYSTEMATIC_ERROR` (one sigma) besides its
statistical one; the synthetic phantoms, whose nuclei are larger than MoNuSeg's, are read 3-27 %
too fine. Low-power images blur nuclei, a few pixels across, into larger blobs and are read
too fine: BreakHis 40X images come out only ~1.5x coarser than 100X ones, not 2.5x.

An estimate is **unreliable** (``reliable=False`` with the ``reason``) when the image is blank,
when fewer than :data:`MIN_NUCLEI` nuclei are found (a 50 x 50 patch), when the iteration does
not settle, when the radii are too spread for the count to pin their percentile down, or when
the result lies outside :data:`ESTIMATE_RANGE_UM`. Callers must then ask the user instead of
guessing (:func:`histoview.models.inputs.resolve_pixel_size`).

**Computed once per image.** Estimates are remembered by the image's content (a BLAKE2 digest
of its pixels) and the arguments, for the last :data:`CACHE_SIZE` images: explaining the same
image again (another method, "Run all methods", the CLI's several methods) reuses it. An
estimate of a whole image (not sampled in tiles) also keeps the nuclei its last detector run
found (``PixelSizeEstimate.nuclei``), which are the nuclei detected at the estimate, so that
the nuclei-graph method need not detect them again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "MIN_NUCLEI",
    "NUCLEUS_RADIUS_UM",
    "PixelSizeEstimate",
    "estimate_pixel_size",
    "is_blank",
]

#: 33rd percentile of the nucleus blob radius (um), calibrated on MoNuSeg (module docstring)
NUCLEUS_RADIUS_UM = 2.28
#: radius (um) at the peak of the image's blob-energy spectrum, calibrated on MoNuSeg
SPECTRUM_RADIUS_UM = 2.64
#: percentile of the per-nucleus radii used (robust to merged clusters and large tumour nuclei)
RADIUS_PERCENTILE = 33.0
#: fewest nuclei an estimate may rest on (below ~40 the iteration can settle on a few large
#: tumour nuclei at too fine a pixel size)
MIN_NUCLEI = 50
#: relative one-sigma error of an estimate from nuclear size differences between tissues
SYSTEMATIC_ERROR = 0.12
#: largest statistical (bootstrap) relative error of a reliable estimate
MAX_STATISTICAL_ERROR = 0.10
#: pixel sizes (um/px) an estimate may give: 100x oil immersion to a 2.5x overview
ESTIMATE_RANGE_UM = (0.04, 3.0)
#: pixels analysed at most; larger images are sampled in 1024 x 1024 tiles rich in tissue
MAX_PIXELS = 4_000_000
#: detector runs at most per estimate
MAX_ITERATIONS = 10
#: estimates remembered (by image content and arguments)
CACHE_SIZE = 8

_SIGMA0, _PER_OCTAVE, _N_SCALES = 1.0, 4, 26
_TILE = 1024


@dataclass(frozen=True)
class PixelSizeEstimate:
    """The pixel size of an image, estimated from its nuclei.

    Attributes:
        pixel_size_um: the estimate (um/px), or None when none could be made.
        reliable: whether it may be used without asking the user.
        relative_error: one-sigma relative error (statistical and systematic), or None.
        n_nuclei: nuclei measured at the estimate.
        reason: why it is unreliable (None when reliable).
        start_um: the guess-free start from the blob-energy spectrum (um/px), or None.
        iterations: detector runs made.
        nuclei: the :class:`~histoview.preprocessing.nuclei.Nuclei` of the whole image that
            the last detector run found at ``pixel_size_um`` (default detector settings);
            None when the image was sampled in tiles or the estimate is unreliable. Shared
            by every caller of a remembered estimate: read it, do not change it.
    """

    pixel_size_um: float | None
    reliable: bool
    relative_error: float | None
    n_nuclei: int
    reason: str | None
    start_um: float | None
    iterations: int
    nuclei: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> dict:
        """Plain data for JSON outputs (without the nuclei)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "nuclei"}
        for key in ("pixel_size_um", "relative_error", "start_um"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 5)
        return out


def is_blank(image: np.ndarray) -> str | None:
    """Why ``image`` (H, W, 3) uint8 holds no tissue to analyse, or None when it does.

    Blank: almost every pixel is glass (bright and unsaturated, the rule of
    :func:`histoview.preprocessing.patches.glass_fraction`), or the image is one flat colour
    (grey-level standard deviation below 2 of 255: black, white or a constant fill).
    """
    from histoview.preprocessing.patches import glass_fraction

    rgb = np.asarray(image)[..., :3]
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    sample = rgb[::step, ::step]
    if float(sample.astype(np.float32).mean(-1).std()) < 2.0:
        return "the image is one flat colour (no tissue)"
    glass = float(glass_fraction(sample[None])[0])
    if glass > 0.98:
        return f"the image is blank: {glass:.0%} of it is glass (no tissue)"
    return None


def estimate_pixel_size(
    image: np.ndarray,
    *,
    min_nuclei: int = MIN_NUCLEI,
    max_pixels: int = MAX_PIXELS,
    max_iterations: int = MAX_ITERATIONS,
) -> PixelSizeEstimate:
    """Estimate micrometres per pixel of an H&E image from its nuclei (module docstring).

    Args:
        image: (H, W, 3) uint8 RGB (RGBA accepted, alpha dropped).
        min_nuclei: fewest nuclei a reliable estimate rests on.
        max_pixels: larger images are sampled in 1024 x 1024 tiles with the most tissue.
        max_iterations: detector runs at most.

    Returns:
        A :class:`PixelSizeEstimate`; check ``reliable`` (and ``reason``) before using it.
        The same image (same pixels) with the same arguments gets the remembered estimate
        (module docstring).
    """
    from histoview.preprocessing.nuclei import _as_rgb

    rgb = np.ascontiguousarray(_as_rgb(image))
    key = _key(rgb, min_nuclei, max_pixels, max_iterations)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    est = _estimate(rgb, min_nuclei, max_pixels, max_iterations)
    with _CACHE_LOCK:
        _CACHE[key] = est
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return est


def remembered_estimate(image: np.ndarray) -> PixelSizeEstimate | None:
    """The remembered estimate of ``image`` made with the default arguments, or None (this
    never estimates: e.g. to reuse its nuclei where a caller got only the number)."""
    from histoview.preprocessing.nuclei import _as_rgb

    key = _key(np.ascontiguousarray(_as_rgb(image)), MIN_NUCLEI, MAX_PIXELS, MAX_ITERATIONS)
    with _CACHE_LOCK:
        return _CACHE.get(key)


def _key(rgb: np.ndarray, min_nuclei: int, max_pixels: int, max_iterations: int) -> tuple:
    digest = hashlib.blake2b(memoryview(rgb).cast("B"), digest_size=16).hexdigest()
    return digest, rgb.shape, rgb.dtype.str, int(min_nuclei), int(max_pixels), int(max_iterations)


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every remembered estimate."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _estimate(rgb, min_nuclei: int, max_pixels: int, max_iterations: int) -> PixelSizeEstimate:
    h, w = rgb.shape[:2]
    blank = is_blank(rgb)
    if blank:
        return _unreliable(None, 0, blank, None, 0)
    tiles = [rgb[r : r + th, c : c + tw] for r, c, th, tw in _tissue_tiles(rgb, max_pixels)]
    spaces = [_ScaleSpace(_hematoxylin(t)) for t in tiles]
    energy = np.sum([s.energy() * s.size for s in spaces], axis=0)
    start = _start_from_spectrum(energy)
    if start is None:
        return _unreliable(None, 0, "no dark blobs (nuclei) in the haematoxylin channel", None, 0)
    lo, hi = ESTIMATE_RANGE_UM
    p, radii, runs, settled, found = _settle(spaces, tiles, start, min_nuclei, max_iterations)
    if len(radii) < min_nuclei:
        # too few nuclei where the guess is too fine (big ones only): once more from 2x coarser
        p2, radii2, runs2, settled2, found2 = _settle(
            spaces, tiles, 2 * start, min_nuclei, max_iterations
        )
        runs += runs2
        if len(radii2) >= min_nuclei:
            p, radii, settled, found = p2, radii2, settled2, found2
    n = len(radii)
    size = f"{h} x {w} image" if len(tiles) == 1 else f"{len(tiles)} tiles of the {h} x {w} image"
    if n < min_nuclei:
        return _unreliable(
            p,
            n,
            f"only {n} nuclei found in the {size}; at least {min_nuclei} are needed to "
            "measure their size: a small patch, little tissue or not H&E",
            start,
            runs,
        )
    stat = _bootstrap_error(radii)
    error = float(np.hypot(stat, SYSTEMATIC_ERROR))
    if not settled:
        return _unreliable(
            p, n, f"the nuclei sizes did not settle in {runs} detector runs", start, runs, error
        )
    if stat > MAX_STATISTICAL_ERROR:
        return _unreliable(
            p,
            n,
            f"the {n} nuclei's sizes are too spread to measure (+-{stat:.0%})",
            start,
            runs,
            error,
        )
    if not lo <= p <= hi:
        return _unreliable(
            p, n, f"the estimate {p:.3g} um/px is outside {lo:g}-{hi:g} um/px", start, runs, error
        )
    whole = len(tiles) == 1 and tiles[0].shape[:2] == rgb.shape[:2]
    return PixelSizeEstimate(p, True, error, n, None, start, runs, found[0] if whole else None)


def _settle(spaces, tiles, start: float, min_nuclei: int, max_iterations: int):
    """Iterate detection and blob sizing from ``start`` (module docstring, step 2).

    Returns ``(pixel size, radii (px) at it, detector runs, settled, nuclei per tile)``:
    once settled, the pixel size is the one the last detector run used (its nuclei gave the
    radii), so the nuclei are those detected at the returned pixel size."""
    from histoview.preprocessing.nuclei import detect_nuclei

    lo, hi = ESTIMATE_RANGE_UM
    p, radii, runs, settled = float(np.clip(start, lo / 2, hi * 2)), np.zeros(0), 0, False
    found: list = []
    while runs < max_iterations and not settled:
        runs += 1
        found = [detect_nuclei(t, p) for t in tiles]
        radii = np.concatenate([s.radius_at(n.centroids) for s, n in zip(spaces, found)])
        if len(radii) < min_nuclei:
            break
        new = NUCLEUS_RADIUS_UM / float(np.percentile(radii, RADIUS_PERCENTILE))
        new = float(np.clip(new, p / 2, p * 2))  # at most a factor 2 per step
        settled = abs(np.log(new / p)) < 0.01
        if not settled:
            p = float(np.clip(new, lo / 2, hi * 2))
    return p, radii, runs, settled, found


def _unreliable(p, n, reason, start, runs, error=None) -> PixelSizeEstimate:
    return PixelSizeEstimate(p, False, error, int(n), reason, start, runs)


def _hematoxylin(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    return rgb2hed(rgb).astype(np.float32)[..., 0]


def _tissue_tiles(rgb: np.ndarray, max_pixels: int) -> list[tuple[int, int, int, int]]:
    """``(row, col, height, width)`` of the whole image, or of the 1024 x 1024 tiles with the
    least glass (as many as ``max_pixels`` allows, at least one)."""
    from histoview.preprocessing.patches import glass_fraction

    h, w = rgb.shape[:2]
    if h * w <= max_pixels:
        return [(0, 0, h, w)]
    t = _TILE
    cands = [(r, c) for r in range(0, max(h - t, 0) + 1, t) for c in range(0, max(w - t, 0) + 1, t)]
    step = 16
    glass = [
        float(glass_fraction(rgb[r : r + t : step, c : c + t : step][None])[0]) for r, c in cands
    ]
    keep = np.argsort(glass, kind="stable")[: max(1, max_pixels // (t * t))]
    return [(*cands[i], min(t, h), min(t, w)) for i in sorted(keep)]


class _ScaleSpace:
    """Scale-normalised LoG responses of a haematoxylin image on a 2x pyramid.

    Scale ``j`` has sigma ``s_j = 1.0 * 2^(j/4)`` px (j = 0..25) and is computed on the level
    downsampled by ``f_j = 2^floor(log2(s_j / 2))`` (box means), where sigma is 2-4 px: the
    normalised response ``-s^2 lap(G_s * H)`` is the same in any pixel unit.
    """

    def __init__(self, hema: np.ndarray):
        self.size = hema.size
        self.sigmas = _SIGMA0 * 2.0 ** (np.arange(_N_SCALES) / _PER_OCTAVE)
        self.factors = [int(2 ** max(0, np.floor(np.log2(s / 2.0)))) for s in self.sigmas]
        pyramid, f = {1: hema}, 1
        while f < max(self.factors):
            pyramid[2 * f] = _half(pyramid[f])
            f *= 2
        self.maps = []
        for s, f in zip(self.sigmas, self.factors):
            im = pyramid[f]
            if min(im.shape) < 4:
                self.maps.append(None)
                continue
            se = s / f
            self.maps.append((-(se**2) * ndi.gaussian_laplace(im, se)).astype(np.float32))

    def energy(self) -> np.ndarray:
        """(26,) mean squared positive response per scale (0 where the level is too small)."""
        return np.array(
            [float(np.mean(np.maximum(m, 0) ** 2)) if m is not None else 0.0 for m in self.maps]
        )

    def radius_at(self, points: np.ndarray) -> np.ndarray:
        """Blob radius (px) at each (row, col): ``sqrt(2) s*`` where the response peaks over
        scales (parabolic refinement in log scale); points peaking at the first or last scale
        are dropped."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if len(points) == 0:
            return np.zeros(0)
        resp = np.full((len(self.maps), len(points)), -np.inf, np.float32)
        for j, (f, m) in enumerate(zip(self.factors, self.maps)):
            if m is not None:
                q = (points + 0.5) / f - 0.5
                resp[j] = ndi.map_coordinates(m, q.T, order=1, mode="nearest")
        last = max(k for k, m in enumerate(self.maps) if m is not None)  # levels end when small
        j = np.argmax(resp[: last + 1], axis=0)
        inner = (j > 0) & (j < last)
        i, j = np.nonzero(inner)[0], j[inner]
        a, b, c = resp[j - 1, i], resp[j, i], resp[j + 1, i]
        den = a - 2 * b + c
        offset = np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
        log_sigma = np.log2(self.sigmas[j]) + np.clip(offset, -0.5, 0.5) / _PER_OCTAVE
        return np.sqrt(2.0) * 2.0**log_sigma


def _half(a: np.ndarray) -> np.ndarray:
    """2 x 2 box mean (drops an odd last row/column)."""
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:h, :w]
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _start_from_spectrum(energy: np.ndarray, frac: float = 0.7) -> float | None:
    """:data:`SPECTRUM_RADIUS_UM` / the energy-weighted radius of the spectrum's peak band
    (the contiguous scales with at least ``frac`` of the peak energy), or None when flat."""
    if not np.isfinite(energy).all() or energy[1:-1].max() <= 1e-12:
        return None
    radii = _SIGMA0 * 2.0 ** (np.arange(len(energy)) / _PER_OCTAVE) * np.sqrt(2.0)
    j = int(np.argmax(energy[1:-1])) + 1
    lo = hi = j
    while lo > 0 and energy[lo - 1] >= frac * energy[j]:
        lo -= 1
    while hi < len(energy) - 1 and energy[hi + 1] >= frac * energy[j]:
        hi += 1
    weights = energy[lo : hi + 1] - 0.999 * frac * energy[j]
    radius = float(np.exp(np.sum(weights * np.log(radii[lo : hi + 1])) / weights.sum()))
    return SPECTRUM_RADIUS_UM / radius


def _bootstrap_error(radii: np.ndarray, n_boot: int = 200) -> float:
    """Relative standard error of the radii's percentile (bootstrap, fixed seed)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(radii), (n_boot, len(radii)))
    q = np.percentile(radii[idx], RADIUS_PERCENTILE, axis=1)
    return float(np.std(np.log(q)))
