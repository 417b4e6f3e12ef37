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
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.preprocessing.patches import PatchGrid

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


def image_digest(image: np.ndarray) -> str:
    """A content key of an array (shape, dtype and bytes), for per-image caches."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(str((image.shape, image.dtype.str)).encode(), digest_size=16)
    h.update(memoryview(image).cast("B"))
    return h.hexdigest()


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


def _element_kind(expl: Explanation) -> str:
    geom = expl.geometry
    if isinstance(geom, PatchGrid):
        return "patches"
    if isinstance(geom, NucleiPoints):
        return "nuclei"
    if isinstance(geom, DenseMap):
        return "pixels"
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
        elements=_element_kind(expl),
        num_elements=n,
        target_class=target,
        baseline=baseline,
        perturbation=perturbation,
    )


class ModelPredictor:
    """``predict(images (B, H, W, 3) uint8) -> (B, C) probabilities`` for a loaded model,
    which can also remove an explanation's elements in the model's own input
    (:meth:`removal_curves`, the module docstring's ``"model input"``).

    Each image becomes the model's input exactly as in explanation and training
    (:class:`~histoview.models.inputs.InputSpec` from the checkpoint sidecar ``meta``):
    a patch bag, a resized image or a nuclei graph detected at ``pixel_size_um`` (um/px
    of the images; unknown: the input spec's policy). Inputs are run in batches of
    ``batch_size`` (bags of different sizes one by one), in eval mode without autograd.

    Attributes:
        forward_passes: how many times the model has been run (for tests and benchmarks).
    """

    def __init__(
        self,
        net,
        meta: dict[str, Any] | None = None,
        *,
        pixel_size_um: float | None = None,
        batch_size: int = 8,
    ):
        from histoview.models.inputs import InputSpec

        self.net = net
        self.spec = InputSpec.from_checkpoint(dict(meta or {}), net)
        self.pixel_size_um = self.spec.pixel_size(pixel_size_um)[0]
        self.batch_size = max(1, int(batch_size))
        self.forward_passes = 0
        self._inputs: OrderedDict = OrderedDict()  # (digest, what) -> model input, newest last
        # (image and baseline digests, removed-elements digest) -> probabilities
        self._predicted: OrderedDict = OrderedDict()

    # -- running the model ----------------------------------------------------------------
    def _forward(self, fn, *args) -> np.ndarray:
        """Softmax of ``fn(*args)`` (the net or a part of it) in eval mode, without autograd."""
        import torch

        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                self.forward_passes += 1
                return torch.softmax(fn(*args).float(), -1).cpu().numpy().astype(np.float64)
        finally:
            self.net.train(was_training)

    def _device(self):
        return next(self.net.parameters()).device

    @staticmethod
    def _channels_last(t):
        """Images (B, 3, h, w) or bags (B, N, 3, p, p) laid out channels-last in memory (same
        values and shape; convolutions on the CPU run about twice as fast)."""
        import torch

        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:  # flatten(0, 1) of this is a channels-last (B * N, 3, p, p) view
            return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return t

    def _run(self, batch) -> np.ndarray:
        import torch

        if self.spec.kind == "graph":
            from torch_geometric.data import Batch

            batch = Batch.from_data_list(batch)
        elif len({tuple(x.shape) for x in batch}) > 1:  # bags that lost different patches
            return np.concatenate([self._run([x]) for x in batch])
        else:
            batch = self._channels_last(torch.stack(batch))
        return self._forward(self.net, batch.to(self._device()))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        inputs = [self.spec.model_input(img, self.pixel_size_um) for img in np.asarray(images)]
        step = self.batch_size
        return np.concatenate(
            [self._run(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        )

    def _cached(self, image: np.ndarray, what: str, make):
        """``make()`` remembered per image content (the last two images)."""
        key = (image_digest(image), what)
        if key not in self._inputs:
            self._inputs[key] = make()
            while len(self._inputs) > 2:
                self._inputs.popitem(last=False)
        self._inputs.move_to_end(key)
        return self._inputs[key]

    # -- elements removed in the model's input --------------------------------------------
    def removal_curves(
        self,
        expl: Explanation,
        image: np.ndarray,
        baseline: np.ndarray,
        counts: np.ndarray,
        target: int,
        seed: int = 0,
        batch_size: int = 32,
    ) -> dict[str, np.ndarray] | None:
        """``{"deletion", "insertion"}``: the probability of ``target`` with the ``counts[t]``
        most important elements removed (deletion) or all but them removed (insertion), in
        the model's input; None where the explanation's elements are not that input's.

        All distinct inputs are predicted together, ``batch_size`` per forward pass.
        """
        kind = self.spec.kind
        removal = {"graph": self._graph_removal, "bag": self._bag_removal}.get(
            kind, self._image_removal
        )(expl, image, baseline, seed)
        if removal is None:
            return None
        rank, predict_masks = removal  # rank of each element of the model's input
        masks = np.stack([rank < c for c in counts] + [~(rank < c) for c in counts])
        # each distinct input once: the untouched and the emptied input appear in both
        # curves, and another explanation of the same image by the same model shares more
        context = (image_digest(image), image_digest(baseline))
        keys = [(context, hashlib.blake2b(np.packbits(m).tobytes()).digest()) for m in masks]
        todo = list(dict.fromkeys(k for k in keys if k not in self._predicted))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        step = max(1, int(batch_size))
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            probs = predict_masks(np.stack([masks[first[k]] for k in chunk]))
            for k, row in zip(chunk, probs):
                self._predicted[k] = row
        while len(self._predicted) > 1024:
            self._predicted.popitem(last=False)
        p = np.array([self._predicted[k][target] for k in keys], np.float64)
        return {"deletion": p[: len(counts)], "insertion": p[len(counts) :]}

    def _graph_removal(self, expl, image, baseline, seed):
        """Nuclei graphs: each removed nucleus's node and edges dropped from the graph the
        model gets for ``image`` (detected once), when its nuclei are the explanation's."""
        import torch

        geom = expl.geometry
        if not isinstance(geom, NucleiPoints):
            return None
        # the pixel size the explanation's graph was built at (it may have been estimated
        # from the image), else the predictor's
        mpp = float((expl.extra or {}).get("pixel_size_um") or self.pixel_size_um)
        data = self._cached(image, f"graph@{mpp}", lambda: self.spec.model_input(image, mpp))
        scale = np.array(image.shape[:2], float) / np.array(geom.image_shape, float)
        pos = data.pos.cpu().numpy().astype(np.float64) if data.pos is not None else None
        centroids = np.asarray(geom.centroids, np.float64).reshape(-1, 2) * scale
        if (
            pos is None
            or pos.shape != centroids.shape
            or (len(pos) and np.abs(pos - centroids).max() > 1.0)
        ):
            return None  # not the nuclei the explanation scored
        from histoview.explain.graph import occluded_graphs

        device = self._device()
        data = data.to(device)

        def predict_masks(removed: np.ndarray) -> np.ndarray:
            keep = torch.from_numpy(~removed).to(device)
            return self._forward(self.net, occluded_graphs(data, keep))

        return _ranking(expl.values, seed), predict_masks

    def _bag_removal(self, expl, image, baseline, seed):
        """Patch bags: removed instances replaced with the baseline's patches at the same
        place; instance embeddings computed once and mixed where the model embeds patches
        one by one (``forward_features`` / ``forward_head``)."""
        import torch

        from histoview.preprocessing.transforms import to_tensor

        geom = expl.geometry
        if not isinstance(geom, PatchGrid):
            return None
        bag, grid = self._cached(image, "bag", lambda: self.spec.bag(image))
        scale = np.array(image.shape[:2], float) / np.array(geom.image_shape, float)
        if len(grid) != len(geom) or not np.allclose(
            np.array(geom.patch_size, float) * scale, grid.patch_size, atol=1.0
        ):
            return None
        origins = np.round(np.asarray(geom.origins, float) * scale).astype(np.int64)
        index = {tuple(o): i for i, o in enumerate(np.asarray(grid.origins, np.int64))}
        where = [index.get(tuple(o)) for o in origins]  # explanation element -> bag instance
        if any(w is None for w in where) or len(set(where)) != len(where):
            return None
        where = np.asarray(where)
        p = int(self.spec.patch_size)
        cut = np.stack([baseline[r : r + p, c : c + p] for r, c in np.asarray(grid.origins)])
        base_bag = to_tensor(cut, self.spec.mean, self.spec.std)
        device = self._device()
        bags = self._channels_last(torch.stack([bag, base_bag]).to(device))  # (2, N, 3, p, p)

        rank = np.empty(len(where), np.int64)
        rank[where] = _ranking(expl.values, seed)  # rank of each bag instance

        net = self.net
        split = callable(getattr(net, "forward_features", None)) and callable(
            getattr(net, "forward_head", None)
        )
        if split:
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad():
                    feats = net.forward_features(bags)  # (2, N, D)
                    self.forward_passes += 1
                    head = torch.softmax(net.forward_head(feats[:1]).float(), -1)[0]
                    # the head on the embeddings must be the model: the explanation's own
                    # prediction says so for free; else one forward pass decides
                    explained = torch.as_tensor(np.asarray(expl.probabilities), dtype=head.dtype)
                    if not (
                        explained.shape == head.shape
                        and torch.allclose(head.cpu(), explained, atol=1e-4)
                    ):
                        self.forward_passes += 1
                        whole = torch.softmax(net(bags[:1]).float(), -1)[0]
                        split = bool(torch.allclose(head, whole, atol=1e-5))
            finally:
                net.train(was_training)

        def predict_masks(removed: np.ndarray) -> np.ndarray:
            m = torch.from_numpy(removed).to(device)
            if split:
                mixed = torch.where(m[..., None], feats[1:2], feats[:1])
                return self._forward(net.forward_head, mixed)
            mixed = torch.where(m[..., None, None, None], bags[1:2], bags[:1])
            return self._forward(net, self._channels_last(mixed))

        return rank, predict_masks

    def _image_removal(self, expl, image, baseline, seed):
        """Whole-image models: image and baseline resized to the input once and mixed there;
        the input's elements are its pixels, ranked by the element covering them."""
        import torch

        x = self._cached(image, "image", lambda: self.spec.images(image))
        xb = self.spec.images(baseline)
        rank, _, _ = element_rank_map(expl, tuple(x.shape[-2:]), seed=seed)
        device = self._device()
        pair = torch.stack([x, xb]).to(device)  # (2, 3, h, w)

        def predict_masks(removed: np.ndarray) -> np.ndarray:
            m = torch.from_numpy(removed).to(device)[:, None]  # (S, 1, h, w)
            mixed = torch.where(m, pair[1:2], pair[:1])
            return self._forward(self.net, self._channels_last(mixed))

        return rank, predict_masks


def model_predictor(
    net,
    meta: dict[str, Any] | None = None,
    *,
    pixel_size_um: float | None = None,
    batch_size: int = 8,
) -> ModelPredictor:
    """The :class:`ModelPredictor` of a loaded model: ``predict(images) -> probabilities``
    through the model's input path, plus element removal in that input."""
    return ModelPredictor(net, meta, pixel_size_um=pixel_size_um, batch_size=batch_size)
