"""A-MIL on a whole slide: every tissue patch in one bag, pooled exactly in streaming form.

A-MIL's attention pooling (Patil et al., 2019, equation 3, after Ilse et al., 2018) over a bag
of N patches with features h_p and attention logits ``l_p = w^T tanh(V h_p)`` (gated:
``w^T (tanh(V h_p) * sigmoid(U h_p))``) is::

    a_p = exp(l_p) / sum_j exp(l_j),    z = sum_p a_p h_p,    logits = head(z)

On a slide the bag is every tissue patch (hundreds of thousands), far more than fit in one
forward. Each tile t of the slide engine keeps the log-sum-exp state of its patches::

    m_t = max_p l_p,   s_t = sum_p exp(l_p - m_t),   v_t = sum_p exp(l_p - m_t) h_p

and :func:`merge_pooling` combines the tiles exactly (``M = max_t m_t``,
``S = sum_t s_t exp(m_t - M)``, ``V = sum_t v_t exp(m_t - M)``, ``z = V / S``): the same ``z``
(to floating-point rounding, merged in float64) as pooling the whole bag at once, not an
average of per-tile predictions. The slide prediction is ``head(z)``; the attention map at
patch resolution (one pixel per patch, ``patch size x model pixel size`` micrometres) is
``exp(l_p - M)``, the attention weight relative to the slide's largest (``a_p = value / S``;
the summary gives ``S``), written once every tile is done.

Patches: the tile is cut into the checkpoint's patches (stride = patch size); a patch enters
the bag unless more than ``max_background`` of its pixels are glass
(:func:`~histoview.preprocessing.patches.glass_fraction`; the checkpoint's value, else
:data:`SLIDE_MAX_BACKGROUND`: on a slide most of the grid is glass, which no training bag held
in such a share).

Feature cache (:mod:`histoview.explain.feature_cache`, driven by
:mod:`histoview.explain.slide_cached`): :meth:`AmilSlideProcessor.feature_parts` gives what keys
the embeddings (the extractor's tensors, not the attention head's); while ``feature_sink`` is a
writer, :meth:`~AmilSlideProcessor.process` streams each batch's embeddings into it; and
:meth:`~AmilSlideProcessor.replay` gives the same :class:`TileResult` s from a cached entry,
with no tile read and no extractor run (attention logits, pooling state and map from the
cached embeddings; ``finalize`` is unchanged).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from histoview.explain.slide_processor import (
    FinalMap,
    MapSpec,
    SlideContext,
    SlideOutcome,
    TileResult,
)

#: largest glass fraction of a patch in a slide bag when the checkpoint sets none
SLIDE_MAX_BACKGROUND = 0.9
#: patches per tile edge (a 28-pixel patch gives 448-pixel tiles)
TILE_PATCHES = 16
#: tiles merged at a time in finalize (bounded memory however many tiles)
MERGE_BLOCK = 4096
#: patches through the feature extractor at once (its activations: ~0.1 MB per patch)
PATCH_CHUNK_CPU = 1024
PATCH_CHUNK_CUDA = 16384


def patch_keep(tile: np.ndarray, *, patch: int, max_background: float) -> dict[str, np.ndarray]:
    """``{"keep": (k, k) bool}``: the patches of a (k p, k p, 3) tile that enter the bag (run in
    the loader's workers)."""
    from histoview.preprocessing.patches import glass_fraction

    k = tile.shape[0] // patch
    patches = tile.reshape(k, patch, k, patch, 3).transpose(0, 2, 1, 3, 4)
    glass = glass_fraction(patches.reshape(k * k, patch, patch, 3))
    return {"keep": (glass <= max_background).reshape(k, k)}


def attention_logits(pool, h: torch.Tensor) -> torch.Tensor:
    """The attention logits l_p (N,) of features ``h`` (N, F) (module docstring; the same
    layers as :class:`~histoview.models.amil.AttentionPool`'s forward, before the softmax)."""
    a = torch.tanh(pool.V(h))
    if pool.U is not None:
        a = a * torch.sigmoid(pool.U(h))
    return pool.w(a).squeeze(-1)


def tile_pooling(
    logits: torch.Tensor, h: torch.Tensor, tile_of: torch.Tensor, n_tiles: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile streaming state ``(m (T,), s (T,), v (T, F))`` float64 of patches with logits
    (N,), features (N, F) and tile numbers ``tile_of`` (N,) in 0..n_tiles-1; a tile without
    patches has ``m = -inf, s = 0, v = 0``."""
    logits, h = logits.double(), h.double()
    m = torch.full((n_tiles,), float("-inf"), dtype=torch.float64, device=logits.device)
    m = m.scatter_reduce(0, tile_of, logits, reduce="amax", include_self=True)
    e = torch.exp(logits - m[tile_of])
    s = torch.zeros(n_tiles, dtype=torch.float64, device=logits.device).index_add(0, tile_of, e)
    v = torch.zeros(n_tiles, h.shape[1], dtype=torch.float64, device=logits.device)
    v = v.index_add(0, tile_of, e[:, None] * h)
    return m.cpu().numpy(), s.cpu().numpy(), v.cpu().numpy()


def merge_pooling(m: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Merge per-tile states (m (T,), s (T,), v (T, F)) into ``(M, S, V)`` (module docstring);
    tiles without patches (``s == 0``) add nothing."""
    m, s, v = np.asarray(m, np.float64), np.asarray(s, np.float64), np.asarray(v, np.float64)
    live = s > 0
    if not live.any():
        return float("-inf"), 0.0, np.zeros(v.shape[1:], np.float64)
    M = float(m[live].max())
    scale = np.exp(m[live] - M)
    return M, float((s[live] * scale).sum()), (v[live] * scale[:, None]).sum(0)


def combine(a: tuple[float, float, np.ndarray], b: tuple[float, float, np.ndarray]):
    """Two merged states ``(M, S, V)`` as one (the same log-sum-exp rule)."""
    if a[1] == 0:
        return b
    if b[1] == 0:
        return a
    M = max(a[0], b[0])
    ea, eb = np.exp(a[0] - M), np.exp(b[0] - M)
    return M, a[1] * ea + b[1] * eb, a[2] * ea + b[2] * eb


class AmilSlideProcessor:
    """A-MIL's processor for the slide engine (:mod:`histoview.explain.slide_processor`).

    Args:
        model: an :class:`~histoview.models.amil.AMIL` in eval mode, on ``ctx.device``.
        meta: its checkpoint sidecar (classes, patch settings, operating threshold).
        checkpoint_sha256: the weights' hash.
        ctx: the run's :class:`SlideContext`.
        tile_patches: patches per tile edge.
    """

    method = "amil"

    def __init__(
        self,
        model,
        meta: dict[str, Any],
        checkpoint_sha256: str | None,
        ctx: SlideContext,
        *,
        tile_patches: int = TILE_PATCHES,
    ):
        from histoview.models.inputs import InputSpec

        spec = InputSpec.from_checkpoint(meta, model)
        if spec.stride != spec.patch_size:
            raise ValueError(
                f"A-MIL on a slide cuts patches without overlap; this checkpoint's stride "
                f"{spec.stride} differs from its patch size {spec.patch_size}"
            )
        self.model, self.meta, self.sha, self.ctx = model, meta, checkpoint_sha256, ctx
        self.patch = int(spec.patch_size)
        self.max_background = (
            float(spec.max_background) if spec.max_background is not None else SLIDE_MAX_BACKGROUND
        )
        self.mean = torch.tensor(spec.mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std or (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        self.tile_size = self.patch * int(tile_patches)
        self.overlap = 0
        self.features = int(model.pool.in_features)
        self.maps = (MapSpec("attention_logit", factor=self.patch),)
        self.extras = {
            "m": ((), "float64"),
            "s": ((), "float64"),
            "v": ((self.features,), "float64"),
            "n": ((), "int64"),
        }
        self.prepare_tile = functools.partial(
            patch_keep, patch=self.patch, max_background=self.max_background
        )
        self.stain = meta.get("stain_normalisation")
        #: a :class:`~histoview.explain.feature_cache.FeatureWriter` fed by ``process``, or None
        self.feature_sink = None

    def settings(self) -> dict[str, Any]:
        return {"patch_size": self.patch, "max_background": self.max_background}

    def feature_parts(self) -> dict[str, Any]:
        """What decides the embeddings besides the slide and its grid (the cache key's parts):
        the extractor (structure and tensors), the patches and how they enter it."""
        from histoview.explain.feature_cache import extractor_hash

        return {
            "extractor": extractor_hash(self.model.backbone),
            "features": self.features,
            "patch_size": self.patch,
            "tile_size": self.tile_size,
            "max_background": self.max_background,
            "mean": [float(v) for v in self.mean.view(-1)],
            "std": [float(v) for v in self.std.view(-1)],
            "stain_normalisation": self.stain,
        }

    @torch.no_grad()
    def embed(self, tiles: np.ndarray, keep: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, F) and attention logits (N,) of the kept patches of (B, T, T, 3) uint8
        ``tiles`` (``keep`` (B, k, k) bool), in row-major order of (tile, row, col)."""
        device = self.ctx.device
        b, t = tiles.shape[:2]
        k, p = t // self.patch, self.patch
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device)
        x = x.view(b, k, p, k, p, 3).permute(0, 1, 3, 5, 2, 4).reshape(b * k * k, 3, p, p)
        x = x[torch.from_numpy(keep.reshape(-1)).to(device)]
        mean, std = self.mean.to(device), self.std.to(device)
        chunk = PATCH_CHUNK_CUDA if str(device).startswith("cuda") else PATCH_CHUNK_CPU
        feats = []
        for i in range(0, len(x), chunk):  # bounded activations, whatever the batch size
            feats.append(self.model.backbone((x[i : i + chunk].float() / 255.0 - mean) / std))
        h = torch.cat(feats) if feats else x.new_zeros((0, self.features), dtype=torch.float32)
        return h.float(), attention_logits(self.model.pool, h).float()

    def process(self, tiles, boxes, prepared) -> list[TileResult]:
        keep = np.stack([p["keep"] for p in prepared]).astype(bool)
        h, logits = self.embed(tiles, keep)
        if self.feature_sink is not None:
            self._to_sink(h, boxes, keep)
        return self._results(h, logits, keep)

    @torch.no_grad()
    def replay(self, entry, boxes) -> list[TileResult]:
        """The results of ``boxes`` (ascending tile indices) from the cached embeddings of
        ``entry`` (a :class:`~histoview.explain.feature_cache.CachedFeatures`): what
        ``process`` gives, to float16 rounding of the features, reading no tile."""
        rows = entry.tile_range(boxes[0].index, boxes[-1].index)
        tile, rc = np.asarray(entry.tile[rows]), np.asarray(entry.patch_rc[rows])
        where = {b.index: i for i, b in enumerate(boxes)}
        asked = np.isin(tile, list(where))  # tiles in the range the caller did not ask for
        tile, rc, feats = tile[asked], rc[asked], np.asarray(entry.features[rows])[asked]
        k = self.tile_size // self.patch
        keep = np.zeros((len(boxes), k, k), bool)
        t = np.array([where[int(i)] for i in tile], np.int64)
        origin = np.array([b.frame_rc for b in boxes], np.int64)[t] // self.patch
        keep[t, rc[:, 0] - origin[:, 0], rc[:, 1] - origin[:, 1]] = True
        # the patches in process's order (tile, row, col): sort the cached rows so
        order = np.lexsort((rc[:, 1], rc[:, 0], t))
        h = torch.from_numpy(feats[order].astype(np.float32))
        h = h.to(self.ctx.device)
        return self._results(h, attention_logits(self.model.pool, h).float(), keep)

    def _results(self, h: torch.Tensor, logits: torch.Tensor, keep: np.ndarray):
        n, k = keep.shape[:2]
        tile_of = torch.from_numpy(np.nonzero(keep.reshape(n, -1))[0]).to(h.device)
        m, s, v = tile_pooling(logits, h, tile_of, n)
        grid = np.full((n, k, k), np.nan, np.float32)
        grid[keep] = logits.float().cpu().numpy()
        counts = keep.reshape(n, -1).sum(1)
        return [
            TileResult(
                maps={"attention_logit": grid[i]},
                weights={"attention_logit": keep[i].astype(np.float32)},
                extras={"m": m[i], "s": s[i], "v": v[i], "n": counts[i]},
            )
            for i in range(n)
        ]

    def _to_sink(self, h: torch.Tensor, boxes, keep: np.ndarray) -> None:
        """Each kept patch's embedding, tile, patch-grid and level-0 position to the sink."""
        t, i, j = np.nonzero(keep)
        frame = np.array([b.frame_rc for b in boxes], np.int64)[t]
        level0 = np.array([b.level0 for b in boxes], np.float64)[t]
        step = self.patch * level0[:, 2] / self.tile_size  # level-0 pixels per patch
        self.feature_sink.add(
            h.float().cpu().numpy(),
            tile=np.array([b.index for b in boxes], np.int64)[t],
            patch_rc=np.stack([frame[:, 0] // self.patch + i, frame[:, 1] // self.patch + j], 1),
            level0=np.stack([level0[:, 0] + i * step, level0[:, 1] + j * step], 1),
            tiles=[b.index for b in boxes],
        )

    def pooled(self, store) -> tuple[float, float, np.ndarray, int]:
        """``(M, S, V, N)`` merged over every done tile of ``store``, MERGE_BLOCK tiles at a
        time."""
        idx = store.done_indices()
        state, count = (float("-inf"), 0.0, np.zeros(self.features)), 0
        for i in range(0, len(idx), MERGE_BLOCK):
            part = idx[i : i + MERGE_BLOCK]
            ex = {name: store.extras(name).oindex[part] for name in ("m", "s", "v", "n")}
            state = combine(state, merge_pooling(ex["m"], ex["s"], ex["v"]))
            count += int(ex["n"].sum())
        return (*state, count)

    @torch.no_grad()
    def finalize(self, store) -> SlideOutcome:
        from histoview.explain.base import decide_class

        M, S, V, count = self.pooled(store)
        if count == 0:
            raise ValueError(
                "no tissue patches: every patch of the tissue tiles is more than "
                f"{self.max_background:.0%} glass; no prediction is made from an empty bag"
            )
        z = torch.from_numpy(V / S)
        head = self.model.head[-1]
        logits = z @ head.weight.detach().double().cpu().T + head.bias.detach().double().cpu()
        probs = torch.softmax(logits, -1).numpy()
        classes = list(self.meta.get("classes") or [f"class_{i}" for i in range(len(probs))])
        decided, operating = decide_class(probs, self.meta)

        def relative(values, weight, rows):
            out = np.zeros(values.shape, np.float32)
            inside = weight > 0
            out[inside] = np.exp(values[inside].astype(np.float64) - M)
            return out

        final = store.write_final("attention", relative, source="attention_logit")
        summary = {
            "prediction": classes[decided],
            "predicted_class": decided,
            "probabilities": {c: float(p) for c, p in zip(classes, probs)},
            "operating_threshold": operating,
            "num_patches": count,
            "patch_size": self.patch,
            "max_background": self.max_background,
            "attention_max_logit": M,
            "attention_sum": S,
            "values": "attention weight of each patch relative to the slide's largest "
            "(exp(l_p - max l)); the weights a_p, summing to 1 over the slide's bag, are "
            "value / attention_sum; 0 where no patch entered the bag",
            "pooling": "exact attention pooling over the whole bag (streaming log-sum-exp)",
        }
        fmap = FinalMap(
            name="attention",
            array=final,
            pixel_size_um=store.map_pixel_size("attention_logit"),
            origin_um=store.map_origin_um(),
            channel_names=("attention",),
        )
        return SlideOutcome(summary=summary, maps=[fmap])


def amil_slide_processor(model, meta, sha, ctx: SlideContext) -> AmilSlideProcessor:
    """The registry's factory (``Method.slide``) for ``amil`` and gated A-MIL checkpoints."""
    return AmilSlideProcessor(model, meta, sha, ctx)
