r"""One cell graph over a slide's nuclei: the graph model's prediction and nucleus importance.

The graph is the single-image one (:func:`~histoview.preprocessing.graph.build_nuclei_graph`,
Sureka et al., 2020, Eq. 1: nuclei closer than ``threshold_um`` joined, weight
``1 - d / threshold``, k-d tree pairs), built over every nucleus of the slide (or region) in
level-0 pixels, so edges cross tile borders. It is never needed whole: every quantity below
is computed on *windows*, square cores of the slide that own the nuclei whose centroid they
hold, each with the nuclei around the core (context) and every edge between them
(:class:`NucleusWindows`).

**The slide prediction, exactly** (:func:`pooled_prediction`). The RSF networks' Pooling 1
(Eq. 3; :func:`~histoview.models.graph_layers.sparse_embed_pool`) is a sum over nuclei of local
terms :math:`w_i\, s_i \otimes z_i` and :math:`w_i\, s_i \otimes (A S)_i`, where ``z`` and ``s``
read a nucleus's 2-hop neighbourhood and :math:`(A S)_i` its 3-hop one. Every edge is shorter
than the threshold, so with a context of ``3 * threshold_um`` each owned nucleus's terms are
those of the whole slide graph. The windows' sums are added (in float64; softmax attention
with a running log-sum-exp, as A-MIL's streaming pooling), divided by the pooling's normaliser
(the number of nuclei, or the sum of softmax weights) and passed through the layers after
Pooling 1: the logits of the model on the whole slide graph, in bounded memory, to float
rounding. The model's attention (RSF+Attention) comes out of the same pass, also exact: a
sigmoid gate per nucleus, or softmax weights summing to 1 over the slide.

**Occlusion** (Sureka et al., Sec. III-F, Eq. 5, :math:`p(M(G)) - p(M(G_i))`) on the whole slide
graph would tell how much a nucleus's k-hop neighbourhood moves the prediction for *all* its
nuclei: about 1/N of a single image's score, and (with the current
:mod:`histoview.explain.occlusion`) about 100 s and 4 GB for 100,000 nuclei. It is computed on
windows instead (:func:`window_occlusion`): each nucleus's score is eq. 5 on the graph of the
window that owns it, a ``window_um`` square core plus ``context_um`` around it (default 256 +
2 x 64 = 384 um square, 1.8 times the 230 x 350 um images the bundled weights were trained on),
so the nucleus is at least ``context_um`` from the graph's edge: the score a single-image
explanation of that 384 um field gives it. All windows explain one class: ``target_class``,
else the slide's predicted class. Each window's own class probabilities (the model on the
window's graph) are kept as a coarse probability map.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histoview.preprocessing.graph import NucleiGraph, build_nuclei_graph
from histoview.preprocessing.slide_nuclei import SlideNuclei

__all__ = [
    "NucleusWindows",
    "SlideGraphCancelled",
    "SlideGraphResult",
    "build_slide_graph",
    "explain_slide_graph",
    "pooled_prediction",
    "window_occlusion",
]

#: core edge (um) of the windows of the exact pooled pass (context: 3 x the edge threshold)
POOL_CORE_UM = 1024.0
#: core edge and context (um) of the occlusion windows
WINDOW_UM = 256.0
CONTEXT_UM = 64.0


class SlideGraphCancelled(Exception):
    """The caller's ``cancel()`` returned True between two windows."""


def build_slide_graph(nuclei: SlideNuclei, *, threshold_um: float) -> NucleiGraph:
    """The cell graph of every nucleus of ``nuclei`` (centroids in level-0 pixels, the
    slide's level-0 pixel size), the single-image construction (k-d tree)."""
    return build_nuclei_graph(
        nuclei.centroids,
        pixel_size_um=nuclei.level0_pixel_size_um,
        features=nuclei.features,
        feature_names=nuclei.feature_names,
        threshold_um=threshold_um,
    )


class NucleusWindows:
    """Square windows over nuclei: cores of ``core_px`` level-0 pixels from ``origin`` own the
    nuclei whose centroid they hold (pixel areas, half-open, as tiles own nuclei); each window
    also holds the nuclei within ``context_px`` of its core (Chebyshev distance).

    Iterating gives ``(box, members, n_own)`` per window with nuclei, row-major: ``box`` the
    core (row, col, height, width) in level-0 pixels, ``members`` (n,) indices with the
    ``n_own`` owned ones first.
    """

    def __init__(self, centroids: np.ndarray, core_px: float, context_px: float, origin=(0, 0)):
        from scipy.spatial import cKDTree

        self.centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
        self.core, self.context = float(core_px), float(context_px)
        self.origin = np.asarray(origin, np.float64)
        cell = np.floor((self.centroids + 0.5 - self.origin) / self.core).astype(np.int64)
        self._order = np.lexsort((cell[:, 1], cell[:, 0]))
        keys, self._starts = np.unique(cell[self._order], axis=0, return_index=True)
        self.cells = keys.reshape(-1, 2)
        self._tree = cKDTree(self.centroids) if len(self.centroids) else None

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self) -> Iterator[tuple[tuple[float, ...], np.ndarray, int]]:
        ends = np.append(self._starts[1:], len(self._order))
        half = self.core / 2
        for (i, j), a, b in zip(self.cells, self._starts, ends):
            own = np.sort(self._order[a:b])
            top, left = self.origin + np.array([i, j]) * self.core
            centre = (top + half - 0.5, left + half - 0.5)  # pixel-centre coordinates
            ball = np.asarray(self._tree.query_ball_point(centre, half + self.context, p=np.inf))
            rest = np.setdiff1d(ball.astype(np.int64), own, assume_unique=True)
            yield (top, left, self.core, self.core), np.concatenate([own, rest]), len(own)


def _graph_data(nuclei: SlideNuclei, members: np.ndarray, threshold_um: float, device):
    """The PyG ``Data`` of the graph of ``members`` (their edges among themselves)."""
    graph = build_nuclei_graph(
        nuclei.centroids[members],
        pixel_size_um=nuclei.level0_pixel_size_um,
        features=nuclei.features[members],
        feature_names=nuclei.feature_names,
        threshold_um=threshold_um,
    )
    return graph.to_pyg().to(device)


def _ticker(total: int, phase: str, progress, cancel):
    """A per-window callback: polls ``cancel`` and reports ``progress``."""
    start = time.perf_counter()

    def tick(done: int) -> None:
        if cancel is not None and cancel():
            raise SlideGraphCancelled(f"{phase} cancelled after {done} of {total} windows")
        if progress is not None:
            elapsed = time.perf_counter() - start
            left = elapsed / done * (total - done) if done else None
            progress(
                {
                    "phase": phase,
                    "done": done,
                    "total": total,
                    "elapsed_s": elapsed,
                    "remaining_s": left,
                }  # fmt: skip
            )

    return tick


@torch.no_grad()
def pooled_prediction(
    model,
    nuclei: SlideNuclei,
    *,
    threshold_um: float,
    target_class: int | None = None,
    core_um: float = POOL_CORE_UM,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's logits (classes,) float64 on the whole slide graph and the attention (N,)
    float32 of each nucleus (None without an attention layer), exactly, window by window
    (module docstring). ``target_class`` picks the branch of class-wise attention (default:
    the predicted class).

    Raises:
        ValueError: no nuclei, or a model that is not an RSF network.
        SlideGraphCancelled: ``cancel()`` said True.
    """
    from histoview.models.graph_layers import channel_blocks, rsf_adjacency
    from histoview.models.graph_nets import edge_features

    if len(nuclei) == 0:
        raise ValueError("no nuclei on the slide: no prediction is made from an empty graph")
    if not all(hasattr(model, n) for n in ("node_stage", "forward_head", "edge_dim")):
        raise ValueError(
            f"{type(model).__name__}: the exact slide prediction sums Pooling 1 of an RSF "
            "network (node_stage, forward_head); this graph model has no such parts"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    px = nuclei.level0_pixel_size_um
    context = 3 * threshold_um / px + 1  # 3 hops; every edge is shorter than the threshold
    windows = NucleusWindows(nuclei.centroids, core_um / px, context, nuclei.region[:2])
    att = model.attention
    K, L = (model.branches if att is not None else 1), model.edge_dim
    U = A = None
    D = torch.zeros(K, dtype=torch.float64)
    M = torch.full((K,), -math.inf, dtype=torch.float64)  # running max of softmax logits
    scores = np.zeros((len(nuclei), K), np.float32)
    tick = _ticker(len(windows), "prediction", progress, cancel)
    try:
        for done, (_, members, n_own) in enumerate(windows):
            tick(done)
            data = _graph_data(nuclei, members, threshold_um, device)
            adj = rsf_adjacency(data.edge_index, edge_features(data, L), data.num_nodes)
            out = model.node_stage(data.x, adj)
            z, s = out["z"][:n_own].double(), out["s"][:n_own].double()
            m = torch.sparse.mm(adj, channel_blocks(out["s"], L))[:n_own].double()
            if att is None:
                u = torch.ones(n_own, 1, dtype=torch.float64, device=z.device)
            else:
                score = out["score"][:n_own].double()
                scores[members[:n_own]] = score.float().cpu().numpy()
                if att.gate == "sigmoid":
                    u = torch.sigmoid(score)
                else:
                    top = torch.maximum(M, score.max(0).values.cpu())
                    shrink = torch.exp(M - top)  # rescale what was summed with the old max
                    if U is not None:
                        U, A = (v * shrink.to(v.device).repeat_interleave(v.size(0) // K)[:, None]
                                for v in (U, A))  # fmt: skip
                    D, M = D * shrink, top
                    u = torch.exp(score - M.to(score.device))
            ws = (u[:, :, None] * s[:, None, :]).reshape(n_own, -1)  # (n, K * C1)
            U = ws.T @ z if U is None else U + ws.T @ z
            A = ws.T @ m if A is None else A + ws.T @ m
            D += u.sum(0).cpu() if att is not None and att.gate == "softmax" else float(n_own)
        tick(len(windows))
        norm = D.to(U.device).repeat_interleave(U.size(0) // K)[:, None]
        C1 = U.size(0) // K
        x1 = (U / norm).float().view(1, K, C1, -1)
        a1 = (A / norm).float().view(1, K, C1, C1, L)
        logits = model.forward_head(x1, a1)[0].double().cpu().numpy()
    finally:
        model.train(was_training)
    if att is None:
        return logits, None
    branch = 0 if K == 1 else int(np.argmax(logits) if target_class is None else target_class)
    raw = scores[:, branch].astype(np.float64)
    if att.gate == "sigmoid":
        attention = 1.0 / (1.0 + np.exp(-raw))
    else:
        attention = np.exp(raw - float(M[branch])) / float(D[branch])
    return logits, attention.astype(np.float32)


def window_occlusion(
    model,
    nuclei: SlideNuclei,
    *,
    target_class: int,
    threshold_um: float,
    k: int = 1,
    window_um: float = WINDOW_UM,
    context_um: float = CONTEXT_UM,
    occlusion: bool = True,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Occlusion importance (eq. 5) of each nucleus on its window's graph, and the windows.

    Returns:
        ``importance`` (N,) float32 (None with ``occlusion=False``: only the windows'
        predictions), ``boxes`` (W, 4) float64 level-0 cores, ``probabilities`` (W, classes)
        float64 of the model on each window's graph, ``counts`` (W, 2) int64 (owned nuclei,
        nuclei in the window's graph).
    """
    from histoview.explain.graph import occlusion_importance

    device = next(model.parameters()).device
    px = nuclei.level0_pixel_size_um
    windows = NucleusWindows(nuclei.centroids, window_um / px, context_um / px, nuclei.region[:2])
    importance = np.zeros(len(nuclei), np.float32) if occlusion else None
    boxes, probs, counts = [], [], []
    tick = _ticker(len(windows), "occlusion" if occlusion else "windows", progress, cancel)
    was_training = model.training
    model.eval()
    try:
        for done, (box, members, n_own) in enumerate(windows):
            tick(done)
            data = _graph_data(nuclei, members, threshold_um, device)
            with torch.no_grad():
                probs.append(torch.softmax(model(data).double(), -1)[0].cpu().numpy())
            if occlusion:
                scores = occlusion_importance(model, data, k=k, target_class=target_class)
                importance[members[:n_own]] = scores[:n_own]
            boxes.append(box)
            counts.append((n_own, len(members)))
        tick(len(windows))
    finally:
        model.train(was_training)
    n_classes = int(model.num_classes)
    return (
        importance,
        np.asarray(boxes, np.float64).reshape(-1, 4),
        np.asarray(probs, np.float64).reshape(-1, n_classes),
        np.asarray(counts, np.int64).reshape(-1, 2),
    )


@dataclass(eq=False)
class SlideGraphResult:
    """The explanation of a slide's cell graph.

    Attributes:
        nuclei: the slide's nuclei (centroids in level-0 pixels, features).
        importance: (N,) float32 per nucleus: the attention (``importance_kind``
            ``"attention"``) or window occlusion (``"occlusion"``).
        importance_kind: ``"attention"`` or ``"occlusion"``.
        probabilities: (classes,) float64, the model on the whole slide graph (exact).
        classes: class names.
        target_class: the class explained (occlusion, class-wise attention).
        threshold_um: the graph's edge threshold.
        windows: (W, 4) level-0 cores of the windows; ``window_probabilities`` (W, classes);
            ``window_counts`` (W, 2) owned nuclei and nuclei in the window's graph.
        settings: how it was computed (k, window sizes, attention gate...).
        timings: seconds (CPU time of this process) per step.
    """

    nuclei: SlideNuclei
    importance: np.ndarray
    importance_kind: str
    probabilities: np.ndarray
    classes: tuple[str, ...]
    target_class: int
    threshold_um: float
    windows: np.ndarray
    window_probabilities: np.ndarray
    window_counts: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nuclei)


def explain_slide_graph(
    model,
    nuclei: SlideNuclei,
    *,
    classes: tuple[str, ...] | None = None,
    importance: str = "auto",
    k: int = 1,
    target_class: int | None = None,
    threshold_um: float | None = None,
    window_um: float = WINDOW_UM,
    context_um: float = CONTEXT_UM,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SlideGraphResult:
    """Predict and explain the slide's cell graph (module docstring).

    Args:
        model: a graph model (RSF, RSF+Edge, RSF+Attention) in any mode, on its device.
        nuclei: the slide's nuclei (:func:`~histoview.preprocessing.slide_nuclei.detect_slide_nuclei`).
        classes: class names (default ``class 0``...).
        importance: ``"attention"`` (RSF+Attention), ``"occlusion"`` or ``"auto"`` (attention
            where the model has it).
        k: occlusion hops.
        target_class: class explained (default: the slide's predicted class).
        threshold_um: edge threshold (default :data:`~histoview.models.inputs.GRAPH_THRESHOLD_UM`).
        window_um, context_um: the occlusion windows (and the probability windows).
        progress: ``{"phase", "done", "total", "elapsed_s", "remaining_s"}`` per window.
        cancel: polled between windows; True raises :class:`SlideGraphCancelled`.
    """
    from histoview.models.inputs import GRAPH_THRESHOLD_UM

    threshold = float(threshold_um or GRAPH_THRESHOLD_UM)
    att = getattr(model, "attention", None)
    if importance == "auto":
        importance = "attention" if att is not None else "occlusion"
    if importance not in ("attention", "occlusion"):
        raise ValueError(f"importance must be 'attention' or 'occlusion', got {importance!r}")
    if importance == "attention" and att is None:
        raise ValueError("this graph model has no attention layer; use importance='occlusion'")
    t0 = time.process_time()
    logits, attention = pooled_prediction(
        model, nuclei, threshold_um=threshold, target_class=target_class,
        progress=progress, cancel=cancel,
    )  # fmt: skip
    t1 = time.process_time()
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    target = int(np.argmax(probs)) if target_class is None else int(target_class)
    if not 0 <= target < len(probs):
        raise ValueError(f"target_class {target} out of range for {len(probs)} classes")
    occluded, boxes, window_probs, counts = window_occlusion(
        model, nuclei, target_class=target, threshold_um=threshold, k=k, window_um=window_um,
        context_um=context_um, occlusion=importance == "occlusion", progress=progress,
        cancel=cancel,
    )  # fmt: skip
    t2 = time.process_time()
    values = attention if importance == "attention" else occluded
    names = tuple(classes) if classes else tuple(f"class {i}" for i in range(len(probs)))
    return SlideGraphResult(
        nuclei=nuclei,
        importance=np.asarray(values, np.float32),
        importance_kind=importance,
        probabilities=probs,
        classes=names,
        target_class=target,
        threshold_um=threshold,
        windows=boxes,
        window_probabilities=window_probs,
        window_counts=counts,
        settings={
            "k": int(k) if importance == "occlusion" else None,
            "window_um": float(window_um),
            "context_um": float(context_um),
            "pool_core_um": POOL_CORE_UM,
            "attention_gate": getattr(att, "gate", None),
        },
        timings={"prediction_s": t1 - t0, "windows_s": t2 - t1},
    )
