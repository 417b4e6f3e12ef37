"""Stain normalisation (Macenko, Reinhard) and HED stain-jitter augmentation of H&E images.

Stain colour differs between labs, scanners and staining batches; a model trained on one
lab's colours can fail on another's. :class:`StainNormaliser` maps an image's colours onto a
reference's, fitted to one reference image or to many (a training set):

* ``macenko`` (Macenko et al., "A method for normalizing histology slides for quantitative
  analysis", ISBI 2009). Optical density ``OD = -log((I + 1) / Io)`` per channel
  (``Io = 240``, the transmitted light); tissue pixels are those with ``OD >= beta``
  (0.15) in every channel. The two stain vectors (the ``3 x 2`` stain matrix, columns
  haematoxylin then eosin) are the directions at the ``alpha`` and ``100 - alpha``
  percentiles (``alpha = 1``) of the tissue ODs' angles in the plane of their two main
  principal components; concentrations ``C`` solve ``OD = HE C`` by least squares, and
  their 99th percentiles over the tissue are the maximum concentrations. An image is
  normalised as ``Io exp(-HE_ref C / (maxC / maxC_ref))`` with its own ``HE`` and
  ``maxC``. The stain-vector estimate is torchstain's (``torchstain.numpy``, its port of
  Macenko's reference code), run on tissue pixels only.
* ``reinhard`` (Reinhard et al., "Color transfer between images", IEEE CG&A 2001): each
  CIE L*a*b* channel is standardised with the image's mean and standard deviation and
  rescaled to the reference's (torchstain's L*a*b* conversion).

Both measure statistics on **tissue pixels only** (the OD threshold above), so glass
does not dilute them: an image that is mostly background gets the same estimate as its
tissue alone. Every pixel (background too) is then mapped. An image with fewer than
:data:`MIN_TISSUE_PIXELS` tissue pixels (blank, background-only, tiny), or whose tissue
shows one colour only (no two stains to separate), raises :class:`StainNormalisationError`
naming the problem; with ``on_no_tissue="keep"`` :meth:`StainNormaliser.transform` returns
such an image unchanged instead (there is no stain to normalise). Outputs are never NaN.

Several reference images (``fit([...])``) pool their tissue pixels into one estimate (the
"concat" mode of Ivanov, Barbano & Grangetto, "Multi-target stain normalization for
histology slides", 2024). The fitted state is plain JSON (:meth:`StainNormaliser.to_dict`:
the stain matrix and maximum concentrations, or Reinhard's L*a*b* means and standard
deviations), stored in checkpoint sidecars so inference applies what training did.

Vahadane's method (sparse non-negative matrix factorisation) is not offered: no
well-kept implementation is installed (StainTools, last released 2019, needs SPAMS).

:func:`hed_jitter` is the stain augmentation of Tellez et al. ("Quantifying the effects of
data augmentation and stain color normalization in convolutional neural networks for
computational pathology", Medical Image Analysis 2019): colour deconvolution into
haematoxylin, eosin and DAB (Ruifrok & Johnston, "Quantification of histochemical staining
by color deconvolution", 2001; scikit-image ``rgb2hed``), each channel ``s`` perturbed to
``a s + b`` with ``a ~ U(1 - sigma, 1 + sigma)`` and ``b ~ U(-sigma, sigma)``, and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: normalisation methods :class:`StainNormaliser` offers
STAIN_METHODS = ("macenko", "reinhard")
#: transmitted light intensity of the optical density (Macenko et al., torchstain's default)
LIGHT_INTENSITY = 240.0
#: a pixel is tissue when its optical density is at least this in every channel
OD_THRESHOLD = 0.15
#: fewer tissue pixels than this: no stain statistics are estimated
MIN_TISSUE_PIXELS = 100
#: at most this many tissue pixels (evenly spaced) enter one estimate (memory, time)
MAX_ESTIMATE_PIXELS = 1_000_000
#: stain vectors closer than this (cosine similarity) are one colour, not two stains
_SAME_DIRECTION = 0.999
_FORMAT = "histoview-stain-normaliser"


class StainNormalisationError(ValueError):
    """An image's stain cannot be estimated (no tissue, one colour); the message says why."""


def _check_rgb(rgb: Any, what: str = "image") -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what}: expected a uint8 RGB image, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise StainNormalisationError(
            f"{what}: the image is empty ({arr.shape[0]} x {arr.shape[1]})"
        )
    return arr


def optical_density(rgb: np.ndarray, io: float = LIGHT_INTENSITY) -> np.ndarray:
    """(..., 3) uint8 RGB -> float64 optical density ``-log((I + 1) / io)`` (same shape)."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / io)


def tissue_mask(
    rgb: np.ndarray, *, od_threshold: float = OD_THRESHOLD, io: float = LIGHT_INTENSITY
) -> np.ndarray:
    """(H, W) bool: pixels whose optical density is >= ``od_threshold`` in every channel
    (torchstain's and Macenko's criterion; glass and bright background are False)."""
    return np.all(optical_density(_check_rgb(rgb), io) >= od_threshold, axis=-1)


def _spaced(pixels: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows of ``pixels``, evenly spaced (deterministic)."""
    if len(pixels) <= limit:
        return pixels
    return pixels[np.linspace(0, len(pixels) - 1, limit).astype(np.int64)]


class StainNormaliser:
    """Map H&E images' stain colours onto a reference's (module docstring).

    Args:
        method: ``"macenko"`` or ``"reinhard"``.
        od_threshold: tissue pixels have at least this optical density in every channel.
        alpha: Macenko's angle percentile (the stain vectors are the ``alpha`` and
            ``100 - alpha`` percentile directions).
        io: transmitted light intensity of the optical density (0-255 scale).
        on_no_tissue: what :meth:`transform` does with an image whose stain cannot be
            estimated: ``"raise"`` (:class:`StainNormalisationError`) or ``"keep"`` it as it is.

    Example::

        norm = StainNormaliser("macenko").fit(reference_rgb)
        out = norm.transform(rgb)                     # (H, W, 3) uint8
        same = StainNormaliser.from_dict(norm.to_dict())
    """

    def __init__(
        self,
        method: str = "macenko",
        *,
        od_threshold: float = OD_THRESHOLD,
        alpha: float = 1.0,
        io: float = LIGHT_INTENSITY,
        on_no_tissue: str = "raise",
    ):
        if method not in STAIN_METHODS:
            raise ValueError(
                f"stain method must be one of {', '.join(STAIN_METHODS)}, got {method!r}"
            )
        if on_no_tissue not in ("raise", "keep"):
            raise ValueError(f"on_no_tissue must be 'raise' or 'keep', got {on_no_tissue!r}")
        if not (0 < od_threshold < 5 and np.isfinite(od_threshold)):
            raise ValueError(f"od_threshold must be in (0, 5), got {od_threshold}")
        if not (0 <= alpha < 50):
            raise ValueError(f"alpha must be a percentile in [0, 50), got {alpha}")
        if not (1 <= io <= 255):
            raise ValueError(f"io must be a light intensity in [1, 255], got {io}")
        self.method = method
        self.od_threshold = float(od_threshold)
        self.alpha = float(alpha)
        self.io = float(io)
        self.on_no_tissue = on_no_tissue
        #: Macenko: (3, 2) stain matrix (columns haematoxylin, eosin) and (2,) max concentrations
        self.stain_matrix: np.ndarray | None = None
        self.max_concentrations: np.ndarray | None = None
        #: Reinhard: (3,) L*a*b* means and standard deviations of the reference's tissue
        self.lab_means: np.ndarray | None = None
        self.lab_stds: np.ndarray | None = None
        #: what the fit saw: images and tissue pixels
        self.fitted_on: dict[str, int] = {}

    # -- state --------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        if self.method == "macenko":
            return self.stain_matrix is not None
        return self.lab_means is not None

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"StainNormaliser({self.method!r}, {state})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StainNormaliser):
            return NotImplemented
        return self.to_dict(_require_fit=False) == other.to_dict(_require_fit=False)

    __hash__ = None  # mutable (fit)

    def to_dict(self, *, _require_fit: bool = True) -> dict[str, Any]:
        """The fitted normaliser as plain JSON: ``method``, settings, and the stain matrix
        and max concentrations (Macenko) or L*a*b* means and stds (Reinhard)."""
        if _require_fit and not self.fitted:
            raise ValueError("the stain normaliser is not fitted: call fit(reference) first")

        def listed(a):
            return None if a is None else np.asarray(a, dtype=float).round(8).tolist()

        out: dict[str, Any] = {
            "format": _FORMAT,
            "method": self.method,
            "od_threshold": self.od_threshold,
            "io": self.io,
            "on_no_tissue": self.on_no_tissue,
        }
        if self.method == "macenko":
            out |= {
                "alpha": self.alpha,
                "stain_matrix": listed(self.stain_matrix),
                "max_concentrations": listed(self.max_concentrations),
            }
        else:
            out |= {"lab_means": listed(self.lab_means), "lab_stds": listed(self.lab_stds)}
        if self.fitted_on:
            out["fitted_on"] = dict(self.fitted_on)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainNormaliser:
        """The normaliser :meth:`to_dict` wrote; ValueError names a missing or bad key."""
        if not isinstance(d, dict):
            raise ValueError(f"stain normaliser: expected a mapping, got {type(d).__name__}")
        method = d.get("method")
        norm = cls(
            method,
            od_threshold=float(d.get("od_threshold", OD_THRESHOLD)),
            alpha=float(d.get("alpha", 1.0)),
            io=float(d.get("io", LIGHT_INTENSITY)),
            on_no_tissue=d.get("on_no_tissue", "raise"),
        )

        def array(key, shape, positive=False):
            if d.get(key) is None:
                raise ValueError(f"stain normaliser ({method}): key {key!r} is missing")
            try:
                a = np.asarray(d[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(
                    f"stain normaliser ({method}): {key!r} must be numbers, got {d[key]!r}"
                ) from None
            if a.shape != shape or not np.all(np.isfinite(a)) or (positive and np.any(a <= 0)):
                what = "positive finite" if positive else "finite"
                raise ValueError(
                    f"stain normaliser ({method}): {key!r} must be {shape} {what} numbers, "
                    f"got {d[key]!r}"
                )
            return a

        if method == "macenko":
            norm.stain_matrix = array("stain_matrix", (3, 2))
            norm.max_concentrations = array("max_concentrations", (2,), positive=True)
        else:
            norm.lab_means = array("lab_means", (3,))
            norm.lab_stds = array("lab_stds", (3,), positive=True)
        norm.fitted_on = dict(d.get("fitted_on") or {})
        return norm

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, reference: np.ndarray | Sequence[np.ndarray]) -> StainNormaliser:
        """Fit to one (H, W, 3) uint8 reference image or a sequence of them (their tissue
        pixels pooled, each image contributing at most an equal share of
        :data:`MAX_ESTIMATE_PIXELS`). Returns ``self``.

        Raises:
            StainNormalisationError: the references hold under :data:`MIN_TISSUE_PIXELS`
                tissue pixels, or their tissue shows one colour only.
        """
        images = [reference] if isinstance(reference, np.ndarray) else list(reference)
        if not images:
            raise ValueError("fit: no reference images given")
        share = max(MAX_ESTIMATE_PIXELS // len(images), MIN_TISSUE_PIXELS)
        pools, total = [], 0
        for i, image in enumerate(images):
            what = "reference image" if len(images) == 1 else f"reference image {i}"
            rgb = _check_rgb(image, what).reshape(-1, 3)
            mask = self._mask(rgb)
            total += rgb.shape[0]
            pools.append(_spaced(rgb[mask], share))
        pixels = np.concatenate(pools)
        what = "the reference image" if len(images) == 1 else f"the {len(images)} reference images"
        self._enough_tissue(len(pixels), total, what)
        if self.method == "macenko":
            self.stain_matrix, self.max_concentrations = self._macenko_estimate(pixels, what)
        else:
            self.lab_means, self.lab_stds = self._lab_stats(pixels, what)
        self.fitted_on = {"images": len(images), "tissue_pixels": int(len(pixels))}
        return self

    # -- applying -----------------------------------------------------------------------------
    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` (H, W, 3) uint8 with the reference's stain, as (H, W, 3) uint8.

        Raises:
            StainNormalisationError: (``on_no_tissue="raise"``) the image has under
                :data:`MIN_TISSUE_PIXELS` tissue pixels or its tissue is one colour.
        """
        if not self.fitted:
            raise ValueError("the stain normaliser is not fitted: call fit(reference) first")
        image = _check_rgb(rgb)
        flat = image.reshape(-1, 3)
        mask = self._mask(flat)
        try:
            self._enough_tissue(int(mask.sum()), flat.shape[0], "the image")
            tissue = _spaced(flat[mask], MAX_ESTIMATE_PIXELS)
            if self.method == "macenko":
                out = self._macenko_apply(flat, tissue)
            else:
                out = self._reinhard_apply(flat, tissue)
        except StainNormalisationError:
            if self.on_no_tissue == "keep":
                return image.copy()
            raise
        return out.reshape(image.shape)

    __call__ = transform

    # -- the methods --------------------------------------------------------------------------
    def _mask(self, flat: np.ndarray) -> np.ndarray:
        return np.all(optical_density(flat, self.io) >= self.od_threshold, axis=-1)

    def _enough_tissue(self, n: int, total: int, what: str) -> None:
        if n < MIN_TISSUE_PIXELS:
            raise StainNormalisationError(
                f"{self.method} stain normalisation: {what} has {n} tissue pixel"
                f"{'s' if n != 1 else ''} of {total} (optical density >= {self.od_threshold:g} "
                f"in every channel; at least {MIN_TISSUE_PIXELS} needed): it is blank, "
                "background only or too small to estimate its stain"
            )

    def _macenko_estimate(self, tissue: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """``(HE (3, 2), maxC (2,))`` of tissue pixels (N, 3) uint8, by torchstain's Macenko."""
        import warnings

        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        est = NumpyMacenkoNormalizer()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            est.fit(tissue.reshape(-1, 1, 3), Io=self.io, alpha=self.alpha, beta=self.od_threshold)
        he = np.asarray(est.HERef, dtype=np.float64)
        max_c = np.asarray(est.maxCRef, dtype=np.float64)
        flipped = he.sum(axis=0) < 0  # an eigenvector's sign is arbitrary; stains are positive
        if flipped.any():
            he = he * np.where(flipped, -1.0, 1.0)
            c = np.linalg.lstsq(he, optical_density(tissue, self.io).T, rcond=None)[0]
            max_c = np.percentile(c, 99, axis=1)
        norms = np.linalg.norm(he, axis=0)
        cosine = abs(float(he[:, 0] @ he[:, 1])) / max(float(norms.prod()), 1e-12)
        if (
            not (np.all(np.isfinite(he)) and np.all(np.isfinite(max_c)))
            or np.any(norms < 1e-6)
            or cosine > _SAME_DIRECTION
            or np.any(max_c <= 1e-6)
        ):
            raise StainNormalisationError(
                f"macenko stain normalisation: the tissue of {what} does not separate into two "
                "stains (its colours lie along one direction: one stain only, or not H&E)"
            )
        return he, max_c

    def _macenko_apply(self, flat: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        he, max_c = self._macenko_estimate(tissue, "the image")
        od = optical_density(flat, self.io)
        c = np.linalg.lstsq(he, od.T, rcond=None)[0]
        c /= (max_c / self.max_concentrations)[:, None]
        out = self.io * np.exp(-self.stain_matrix @ c)
        # torchstain's rounding (truncation after clipping at 255)
        return np.minimum(out.T, 255.0).astype(np.uint8)

    def _lab_stats(self, tissue: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        lab = self._lab(tissue)
        means = np.array([np.mean(ch) for ch in lab], dtype=np.float64)
        stds = np.array([np.std(ch) for ch in lab], dtype=np.float64)
        if not np.all(np.isfinite(stds)) or np.any(stds < 1e-3):
            raise StainNormalisationError(
                f"reinhard stain normalisation: the tissue of {what} has one colour only "
                f"(L*a*b* standard deviations {np.round(stds, 4).tolist()}): nothing to rescale"
            )
        return means, stds

    @staticmethod
    def _lab(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from torchstain.numpy.utils import lab_split, rgb2lab

        return lab_split(rgb2lab(pixels.astype(np.float32) / 255))

    def _reinhard_apply(self, flat: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        from torchstain.numpy.utils import lab2rgb, lab_merge

        means, stds = self._lab_stats(tissue, "the image")
        channels = self._lab(flat)
        scaled = [
            (x - m) / s * s_ref + m_ref
            for x, m, s, m_ref, s_ref in zip(channels, means, stds, self.lab_means, self.lab_stds)
        ]
        rgb = lab2rgb(lab_merge(*scaled).astype(np.float64))
        return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)  # torchstain's rounding

    def stain_distance(self, rgb: np.ndarray) -> float:
        """How far ``rgb``'s stain lies from the reference's (nothing is transformed).
        Reinhard: the largest ``|m - m_ref| / s_ref`` over L*, a*, b* of the tissue pixels
        (in reference standard deviations); Macenko: the largest angle (degrees) between the
        image's and the reference's H and E vectors. StainNormalisationError: no stain to
        estimate (whatever ``on_no_tissue`` says)."""
        flat = _check_rgb(rgb).reshape(-1, 3)
        mask = self._mask(flat)
        self._enough_tissue(int(mask.sum()), flat.shape[0], "the image")
        tissue = _spaced(flat[mask], MAX_ESTIMATE_PIXELS)
        if self.method == "reinhard":
            means, _ = self._lab_stats(tissue, "the image")
            return float(np.max(np.abs(means - self.lab_means) / self.lab_stds))
        he, ref = self._macenko_estimate(tissue, "the image")[0], self.stain_matrix
        cos = np.sum(he * ref, 0) / (np.linalg.norm(he, axis=0) * np.linalg.norm(ref, axis=0))
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())

    def describe(self) -> str:
        """One line: ``macenko stain normalisation fitted on 3 images (812,004 tissue pixels)``."""
        seen = self.fitted_on
        where = (
            f" fitted on {seen['images']} image{'s' if seen['images'] != 1 else ''} "
            f"({seen['tissue_pixels']:,} tissue pixels)"
            if seen
            else (" (fitted)" if self.fitted else " (not fitted)")
        )
        return f"{self.method} stain normalisation{where}"


def hed_jitter(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """HED stain jitter (Tellez et al. 2019; module docstring) of an (H, W, 3) uint8 image.

    Each of the haematoxylin, eosin and DAB channels ``s`` becomes ``a s + b``, with
    ``a ~ U(1 - sigma, 1 + sigma)`` and ``b ~ U(-sigma, sigma)`` drawn from ``rng`` once per
    image. ``sigma = 0`` returns a copy; Tellez et al.'s "HED-light" is about 0.05.
    """
    from skimage.color import hed2rgb, rgb2hed

    image = _check_rgb(rgb)
    if not (0 <= sigma < 1 and np.isfinite(sigma)):
        raise ValueError(f"hed_jitter sigma must be in [0, 1), got {sigma}")
    if sigma == 0:
        return image.copy()
    a = rng.uniform(1 - sigma, 1 + sigma, size=3)
    b = rng.uniform(-sigma, sigma, size=3)
    hed = rgb2hed(image) * a + b
    out = hed2rgb(hed)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


class HedJitter:
    """:func:`hed_jitter` with a fixed ``sigma``, as a training transform
    ``HedJitter(0.05)(image, rng) -> image`` (picklable, for data-loader workers)."""

    def __init__(self, sigma: float = 0.05):
        if not (0 <= sigma < 1 and np.isfinite(sigma)):
            raise ValueError(f"hed_jitter sigma must be in [0, 1), got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return hed_jitter(rgb, self.sigma, rng)

    def __repr__(self) -> str:
        return f"HedJitter(sigma={self.sigma:g})"
