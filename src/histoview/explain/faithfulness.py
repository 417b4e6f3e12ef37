"""Faithfulness of an explanation: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

Deletion (RISE Sec. 4.1): remove the elements the explanation ranks most
important first, in ``steps`` equal steps, and follow the probability of the
explained class; a faithful explanation makes it fall quickly (low area under
the curve). Insertion: start from an input with everything removed and reveal
the most important elements first; a faithful explanation makes the
probability rise quickly (high area). The x axis is the fraction of elements
removed or revealed, in [0, 1]; the areas use the trapezoidal rule. Ties in the
ranking are broken by a fixed pseudo-random order, not by position.

Elements are what each method scores: patches (:class:`PatchGrid`), nuclei
(:class:`NucleiPoints`) or the pixels of the map (:class:`DenseMap`, so each step
is ``1 / steps`` of the image area).

**Where an element is removed** (``FaithfulnessResult.perturbation``):

* ``"image"`` - the definition, for any ``predict(images)``: an element's pixels are
  replaced with a baseline, a heavily blurred copy of the image (RISE's insertion
  baseline; the default) or the image's mean colour; a nucleus is painted over its
  outline (or a disc of ``geometry.radius`` pixels). Every perturbed image then goes
  through the model's whole input path; graph models re-detect nuclei on it.
* ``"model input"`` - the fast path of :func:`model_predictor`'s predictors, in the model's
  own input (:class:`~histoview.models.inputs.InputSpec`), built once per image:

  - nuclei graphs: removing a nucleus drops its node and every edge touching it from the
    graph the model was given (no painting, no re-detection); insertion starts from the
    graph without nodes and adds them back. This measures the model's dependence on the
    nuclei *as its input represents them*; the image definition also measures how the
    detector reacts to painted-over tissue (nuclei that vanish, split or appear), which
    is slower by one nuclei detection per step and mixes the two.
  - patch bags: removing a patch replaces its bag instance with the baseline's patch at
    the same place; the bag keeps its patches (the glass filter is not re-run), which for
    non-overlapping patches (stride = patch size) is the image definition. A-MIL embeds
    each instance on its own (Ilse et al., 2018, Sec. 2.2), so the embeddings of both
    bags are computed once and mixed per step, and only the attention pooling and
    classifier run per step.
  - whole-image CNNs: the image and the baseline are resized to the model's input once
    and mixed there, the map's elements scaled to the input size (nearest); this equals
    the image definition up to the resampling of element borders.

  Where the explanation's elements are not the model's input elements on this image
  (another level, a graph detected elsewhere) it falls back to ``"image"``.

All perturbed inputs of one explanation (deletion and insertion together, duplicates
such as the untouched and the fully removed input computed once) are predicted in
batches of ``batch_size`` (default 32): for 10 steps, one forward pass.

This module owns the curves, their areas and the image definition; the ranking of elements
lives in :mod:`histoview.explain._faithfulness_elements` and the model-input removal
(:class:`ModelPredictor`) in :mod:`histoview.explain._faithfulness_inputs`, both re-exported
here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoview.explain._faithfulness_elements import (
    element_kind,
    element_rank_map,
    image_digest,
)
from histoview.explain._faithfulness_inputs import ModelPredictor, model_predictor
from histoview.explain.base import Explanation

__all__ = [
    "BASELINES",
    "SPACES",
    "FaithfulnessResult",
    "ModelPredictor",
    "Predict",
    "auc",
    "baseline_image",
    "deletion_insertion",
    "element_rank_map",
    "image_digest",
    "model_predictor",
]

Predict = Callable[[np.ndarray], np.ndarray]
BASELINES = ("blur", "mean")
#: where elements are removed (module docstring); "auto": the model input where possible
SPACES = ("auto", "image")


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion curves of one explanation.

    Attributes:
        fractions: (steps + 1,) fraction of elements removed / revealed, 0 to 1.
        deletion: (steps + 1,) probability of the explained class after each deletion step.
        insertion: (steps + 1,) the same for insertion.
        deletion_auc, insertion_auc: trapezoidal areas under the curves (x in [0, 1]).
        method: the explanation's method; elements: "patches", "nuclei" or "pixels".
        num_elements: how many elements were ranked; target_class: the class followed.
        baseline: "blur" or "mean".
        perturbation: where elements were removed: "image" or "model input" (module
            docstring).
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float
    method: str = ""
    elements: str = ""
    num_elements: int = 0
    target_class: int = 0
    baseline: str = "blur"
    perturbation: str = "image"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        return {
            "method": self.method,
            "elements": self.elements,
            "num_elements": self.num_elements,
            "target_class": self.target_class,
            "baseline": self.baseline,
            "perturbation": self.perturbation,
            "fractions": [float(v) for v in self.fractions],
            "deletion": [float(v) for v in self.deletion],
            "insertion": [float(v) for v in self.insertion],
            "deletion_auc": float(self.deletion_auc),
            "insertion_auc": float(self.insertion_auc),
        }


#: curves whose probability moves less than this over all steps carry no information
FLAT_RANGE = 0.02
#: what the plots say over such curves
FLAT_NOTE = "flat: the model's answer did not change, so these curves cannot judge the map"


def flat_curves(result) -> bool:
    """Whether both curves of ``result`` (a :class:`FaithfulnessResult` or its dict) stay
    within :data:`FLAT_RANGE`: a saturated model (p > 0.99 whatever is removed or revealed)
    gives deletion AUC = insertion AUC = p and says nothing about the explanation."""
    get = result.get if isinstance(result, dict) else lambda k: getattr(result, k)
    curves = [np.atleast_1d(np.asarray(get(k), float)) for k in ("deletion", "insertion")]
    if not all(c.size and np.isfinite(c).any() for c in curves):  # no curve: nothing to say
        return False
    return all(np.nanmax(c) - np.nanmin(c) < FLAT_RANGE for c in curves)


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Trapezoidal area under ``values`` over ``fractions``."""
    x = np.asarray(fractions, np.float64)
    y = np.asarray(values, np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def baseline_image(
    image: np.ndarray, kind: str = "blur", *, sigma: float | None = None
) -> np.ndarray:
    """The "removed" image: a heavy Gaussian blur or the mean colour, (H, W, 3) uint8.

    ``sigma`` (pixels) defaults to 5 % of the longer side, at least 5 pixels, which
    wipes out nuclei and glands while keeping the overall colour. Large blurs are
    computed on a downsampled copy (the result is smooth anyway).
    """
    image = np.asarray(image)
    if kind == "mean":
        mean = image.reshape(-1, image.shape[-1]).mean(0)
        return np.broadcast_to(np.round(mean).astype(np.uint8), image.shape).copy()
    if kind != "blur":
        raise ValueError(f"unknown baseline {kind!r}; use one of {BASELINES}")
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    H, W = image.shape[:2]
    sigma = float(sigma) if sigma is not None else max(5.0, 0.05 * max(H, W))
    factor = max(1, int(sigma // 4))
    small = image.astype(np.float32)
    if factor > 1:
        small = resize(
            small,
            (max(1, H // factor), max(1, W // factor)),
            order=1,
            anti_aliasing=True,
            preserve_range=True,
        )
    small = gaussian_filter(small, sigma=(sigma / factor, sigma / factor, 0), mode="reflect")
    if factor > 1:
        small = resize(small, (H, W), order=1, preserve_range=True)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


_BASELINES: OrderedDict = OrderedDict()  # (digest, kind, sigma) -> baseline image, newest last


def _cached_baseline(image: np.ndarray, kind: str, sigma: float | None) -> np.ndarray:
    """:func:`baseline_image`, remembered for the last few images: every method of one
    comparison perturbs the same image."""
    key = (image_digest(image), kind, sigma)
    if key in _BASELINES:
        _BASELINES.move_to_end(key)
        return _BASELINES[key]
    base = baseline_image(image, kind, sigma=sigma)
    base.setflags(write=False)
    _BASELINES[key] = base
    while len(_BASELINES) > 4:
        _BASELINES.popitem(last=False)
    return base


def _perturbed(image, base, rank_map, counts, mode: str) -> Iterator[np.ndarray]:
    for c in counts:
        removed = rank_map < c
        if mode == "insertion":
            yield np.where(removed[..., None], image, base)
        else:
            yield np.where(removed[..., None], base, image)


def _predict_all(
    predict: Predict, images: Iterator[np.ndarray], total: int, target: int, batch_size: int
) -> np.ndarray:
    out: list[float] = []
    batch: list[np.ndarray] = []
    for img in images:
        batch.append(img)
        if len(batch) == batch_size or len(out) + len(batch) == total:
            probs = np.asarray(predict(np.stack(batch)), np.float64)
            if probs.ndim != 2 or len(probs) != len(batch):
                raise ValueError(f"predict returned shape {probs.shape} for {len(batch)} images")
            out.extend(probs[:, target].tolist())
            batch = []
    return np.asarray(out, np.float64)


def deletion_insertion(
    expl: Explanation,
    predict: Predict,
    image: np.ndarray,
    *,
    steps: int = 20,
    baseline: str = "blur",
    target_class: int | None = None,
    batch_size: int = 32,
    blur_sigma: float | None = None,
    seed: int = 0,
    space: str = "auto",
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``expl`` (RISE, Sec. 4.1), perturbing ``image``.

    Args:
        expl: the explanation; its values rank the elements.
        predict: ``(B, H, W, 3) uint8 -> (B, C)`` class probabilities; a predictor of
            :func:`model_predictor` also removes elements in the model's own input.
        image: (H, W, 3) uint8, the image explained (any level of it: element positions
            are scaled from ``expl.image_shape``).
        steps: number of steps; step t removes / reveals ``round(t / steps * N)`` elements.
        baseline: ``"blur"`` or ``"mean"`` (:func:`baseline_image`).
        target_class: class whose probability is followed (default ``expl.target_class``).
        batch_size: inputs per forward pass (images per call of a plain ``predict``).
        blur_sigma: Gaussian sigma of the blur baseline in pixels.
        seed: tie-breaking order of equally important elements.
        space: ``"auto"`` (the model input where ``predict`` offers it, else the image) or
            ``"image"`` (always the image definition); see the module docstring.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; use one of {SPACES}")
    target = expl.target_class if target_class is None else int(target_class)
    base = _cached_baseline(image, baseline, blur_sigma)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    n = len(np.asarray(expl.values).reshape(-1))
    counts = np.round(fractions * n).astype(np.int64)
    curves, perturbation = None, "image"
    if space == "auto" and isinstance(predict, ModelPredictor):
        curves = predict.removal_curves(expl, image, base, counts, target, seed, batch_size)
        perturbation = "model input"
    if curves is None:
        perturbation = "image"
        rank_map, n, _ = element_rank_map(expl, image.shape[:2], seed=seed)
        curves = {}
        for mode in ("deletion", "insertion"):
            images = _perturbed(image, base, rank_map, counts, mode)
            curves[mode] = _predict_all(predict, images, len(counts), target, max(1, batch_size))
    return FaithfulnessResult(
        fractions=fractions,
        deletion=curves["deletion"],
        insertion=curves["insertion"],
        deletion_auc=auc(fractions, curves["deletion"]),
        insertion_auc=auc(fractions, curves["insertion"]),
        method=expl.method,
        elements=element_kind(expl),
        num_elements=n,
        target_class=target,
        baseline=baseline,
        perturbation=perturbation,
    )
