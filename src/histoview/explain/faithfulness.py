"""Faithfulness of an explanation: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

Deletion (RISE Sec. 4.1): remove the elements the explanation ranks most
important first, in ``steps`` equal steps, and follow the probability of the
explained class; a faithful explanation makes it fall quickly (low area under
the curve). Insertion: start from an image with everything removed and reveal
the most important elements first; a faithful explanation makes the
probability rise quickly (high area). The x axis is the fraction of elements
removed or revealed, in [0, 1]; the areas use the trapezoidal rule.

Elements are what each method scores: patches (:class:`PatchGrid`), nuclei
(:class:`NucleiPoints`) or the pixels of the map at the model's resolution
(:class:`DenseMap`, so each step is ``1 / steps`` of the image area).

**All methods are perturbed in image space**, so their curves are comparable:
"removing" an element replaces its pixels with a baseline - a heavily blurred
copy of the image (RISE's insertion baseline; the default) or the image's mean
colour. A nucleus is removed by painting its outline (or a disc of
``geometry.radius`` pixels) with the baseline; graph models then re-detect
nuclei on the perturbed image, as they would on any image. Ties in the
ranking are broken by a fixed pseudo-random order, not by position.

:func:`model_predictor` builds the ``predict`` callable for a loaded histoview
model (through the same input path as explanation and training); all perturbed images are
predicted in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.preprocessing.patches import PatchGrid

Predict = Callable[[np.ndarray], np.ndarray]
BASELINES = ("blur", "mean")


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        return {
            "method": self.method,
            "elements": self.elements,
            "num_elements": self.num_elements,
            "target_class": self.target_class,
            "baseline": self.baseline,
            "fractions": [float(v) for v in self.fractions],
            "deletion": [float(v) for v in self.deletion],
            "insertion": [float(v) for v in self.insertion],
            "deletion_auc": float(self.deletion_auc),
            "insertion_auc": float(self.insertion_auc),
        }


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


def _ranking(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rank of each element (0 = most important); ties in a fixed pseudo-random order."""
    values = np.asarray(values, np.float64).ravel()
    values = np.where(np.isfinite(values), values, -np.inf)
    tiebreak = np.random.default_rng(seed).permutation(len(values))
    order = np.lexsort((tiebreak, -values))
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    return rank


def element_rank_map(
    expl: Explanation, shape: tuple[int, int], *, seed: int = 0
) -> tuple[np.ndarray, int, str]:
    """Per pixel of an image of ``shape``: the rank of the most important element covering it.

    Returns ``(rank_map, num_elements, kind)``; pixels covered by no element hold
    ``num_elements`` (never removed).
    """
    geom = expl.geometry
    H, W = shape
    gh, gw = geom.image_shape
    sy, sx = H / gh, W / gw
    rank = _ranking(expl.values, seed)
    n = len(rank)
    out = np.full((H, W), n, np.int64)
    if isinstance(geom, PatchGrid):
        ph, pw = geom.patch_size
        for (r, c), k in zip(geom.origins, rank):
            r0, c0 = int(round(r * sy)), int(round(c * sx))
            r1, c1 = int(round((r + ph) * sy)), int(round((c + pw) * sx))
            np.minimum(out[r0:r1, c0:c1], k, out=out[r0:r1, c0:c1])
        return out, n, "patches"
    if isinstance(geom, NucleiPoints):
        from skimage.draw import disk, polygon

        for i, k in enumerate(rank):
            if geom.outlines and len(geom.outlines[i]) >= 3:
                poly = np.asarray(geom.outlines[i], np.float64)
                rr, cc = polygon(poly[:, 0] * sy, poly[:, 1] * sx, (H, W))
            else:
                r, c = geom.centroids[i]
                rr, cc = disk((r * sy, c * sx), max(geom.radius * min(sy, sx), 1.0), shape=(H, W))
            out[rr, cc] = np.minimum(out[rr, cc], k)
        return out, n, "nuclei"
    if isinstance(geom, DenseMap):
        h, w = np.shape(expl.values)
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return rank.reshape(h, w)[rows[:, None], cols[None, :]], n, "pixels"
    raise TypeError(f"cannot perturb elements of a {type(geom).__name__}")


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
    batch_size: int = 16,
    blur_sigma: float | None = None,
    seed: int = 0,
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``expl`` (RISE, Sec. 4.1), perturbing ``image``.

    Args:
        expl: the explanation; its values rank the elements.
        predict: ``(B, H, W, 3) uint8 -> (B, C)`` class probabilities (see :func:`model_predictor`).
        image: (H, W, 3) uint8, the image explained (any level of it: element positions
            are scaled from ``expl.image_shape``).
        steps: number of steps; step t removes / reveals ``round(t / steps * N)`` elements.
        baseline: ``"blur"`` or ``"mean"`` (:func:`baseline_image`).
        target_class: class whose probability is followed (default ``expl.target_class``).
        batch_size: images per call of ``predict``.
        blur_sigma: Gaussian sigma of the blur baseline in pixels.
        seed: tie-breaking order of equally important elements.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    target = expl.target_class if target_class is None else int(target_class)
    base = baseline_image(image, baseline, sigma=blur_sigma)
    rank_map, n, kind = element_rank_map(expl, image.shape[:2], seed=seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n).astype(np.int64)
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
        elements=kind,
        num_elements=n,
        target_class=target,
        baseline=baseline,
    )


def model_predictor(
    net,
    meta: dict[str, Any] | None = None,
    *,
    pixel_size_um: float | None = None,
    batch_size: int = 8,
) -> Predict:
    """``predict(images (B, H, W, 3) uint8) -> (B, C) probabilities`` for a loaded model.

    Each image becomes the model's input exactly as in explanation and training
    (:class:`~histoview.models.inputs.InputSpec` from the checkpoint sidecar ``meta``):
    a patch bag, a resized image or a nuclei graph detected at ``pixel_size_um`` (um/px
    of the images; unknown: the input spec's policy). Inputs are run in batches of
    ``batch_size`` (bags of different sizes one by one), in eval mode without autograd.
    """
    import torch

    from histoview.models.inputs import InputSpec

    spec = InputSpec.from_checkpoint(dict(meta or {}), net)
    mpp = spec.pixel_size(pixel_size_um)[0]
    device = next(net.parameters()).device

    def run(batch) -> np.ndarray:
        if spec.kind == "graph":
            from torch_geometric.data import Batch

            batch = Batch.from_data_list(batch)
        elif len({tuple(x.shape) for x in batch}) > 1:  # bags that lost different patches
            return np.concatenate([run([x]) for x in batch])
        else:
            batch = torch.stack(batch)
        return torch.softmax(net(batch.to(device)).float(), -1).cpu().numpy()

    def predict(images: np.ndarray) -> np.ndarray:
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                inputs = [spec.model_input(img, mpp) for img in np.asarray(images)]
                step = max(1, batch_size)
                return np.concatenate([run(inputs[i : i + step]) for i in range(0, len(inputs), step)])
        finally:
            net.train(was_training)

    return predict
