"""Elements removed in the model's own input: the ``"model input"`` perturbation of
:func:`histoview.explain.faithfulness.deletion_insertion` (see that module's docstring).

:class:`ModelPredictor` is ``predict(images) -> probabilities`` through a loaded model's
input path (:class:`~histoview.models.inputs.InputSpec`) which can also remove an
explanation's elements from the nuclei graph, the patch bag or the resized image the model
was given, built once per image.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from histoview.explain._faithfulness_elements import (
    element_rank_map,
    element_ranks,
    image_digest,
)
from histoview.explain.base import Explanation, NucleiPoints
from histoview.preprocessing.patches import PatchGrid


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

    def _tiled(self, image: np.ndarray) -> bool:
        from histoview.explain.tiled_cam import needs_tiles

        return needs_tiles(self.spec, image.shape, self.pixel_size_um)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if len(images) and self._tiled(images[0]):  # a patch classifier: the tiles' mean
            from histoview.explain.tiled_cam import field_pixels, tile_image, tile_probabilities

            field = field_pixels(self.spec, self.pixel_size_um)
            self.forward_passes += len(images)
            return np.stack(
                [
                    tile_probabilities(self.net, self.spec, tile_image(img, field)[0]).mean(0)
                    for img in images
                ]
            ).astype(np.float64)
        inputs = [self.spec.model_input(img, self.pixel_size_um) for img in images]
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

        return element_ranks(expl.values, seed), predict_masks

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
        rank[where] = element_ranks(expl.values, seed)  # rank of each bag instance

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
        the input's elements are its pixels, ranked by the element covering them (None for
        a patch classifier cut into tiles: its removals are made in the image)."""
        import torch

        if self._tiled(image):
            return None

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
