r"""Per-nucleus importance for nuclei-graph models.

The importance measures of Sureka, Patil, Anand and Sethi, "Visualization for
Histopathology Images using Graph Convolutional Neural Networks" (arXiv:2006.09464, 2020,
Sec. III-F):

* :func:`attention_importance` - the attention scores of RSF+Attention;
* :func:`occlusion_importance` - eq. 5, :math:`\mathrm{score}_i = p(M(G)) - p(M(G_i))`,
  where :math:`G_i` is the graph without nucleus i, its k-hop neighbours and their edges;
* :func:`explain_graph` - either one as an :class:`~histoview.explain.base.Explanation`.

Occlusion by definition (:func:`occluded_graphs`): every chunk of occluded graphs as one
PyG ``Batch`` and one forward pass; it works for any graph model and on any device. For
RSF networks on the CPU the exact incremental engine of :mod:`histoview.explain.occlusion`
gives the same scores at a small fraction of the cost (``benchmarks/bench_occlusion.py``);
every call compares it with the definition (the full graph and a few occluded graphs) and
falls back to the definition, with a warning, where they disagree.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from histoview.explain.base import Explanation, NucleiPoints
from histoview.explain.occlusion import IncrementalOcclusion, Neighbours, supports_incremental

__all__ = [
    "attention_importance",
    "explain_graph",
    "hop_distances",
    "occluded_graphs",
    "occlusion_importance",
]

# Engine and definition agree to float32 rounding (~1e-6 relative); a model whose arithmetic
# differs from what the engine assumes misses this by orders of magnitude.
CHECK_RTOL = CHECK_ATOL = 1e-3


def hop_distances(edge_index: Tensor, num_nodes: int, sources, max_hops: int) -> Tensor:
    """Undirected hop distance from each source to every node, up to ``max_hops``.

    Args:
        edge_index: (2, E) edges of a graph with ``num_nodes`` nodes.
        sources: node indices (S,).
        max_hops: largest distance computed.

    Returns:
        (S, N) uint8; nodes farther than ``max_hops`` (or unreachable) get 255.
    """
    sources = np.asarray(sources, np.int64).reshape(-1)
    *_, table = Neighbours(edge_index, num_nodes).balls(sources, max_hops)
    return torch.from_numpy(table)


def occluded_graphs(data, keep: Tensor):
    """The graph ``data`` restricted to each row of ``keep`` as one PyG ``Batch``.

    Args:
        data: one graph, ``Data`` with x (N, F), edge_index (2, E) and optional edge_attr.
        keep: (C, N) bool, the nodes each of the C graphs keeps (on ``data``'s device).

    Node and edge masks only (no Python loop over graphs); edges survive when both their
    endpoints are kept. Graphs left without nodes stay in the batch as empty graphs.
    """
    from torch_geometric.data import Batch

    C, N = keep.shape
    device = keep.device
    copy, node = keep.nonzero(as_tuple=True)
    new_id = torch.full((C * N,), -1, dtype=torch.long, device=device)
    new_id[copy * N + node] = torch.arange(copy.numel(), device=device)
    src, dst = data.edge_index
    e_copy, e_id = (keep[:, src] & keep[:, dst]).nonzero(as_tuple=True)
    edge_index = torch.stack([new_id[e_copy * N + src[e_id]], new_id[e_copy * N + dst[e_id]]])
    ptr = torch.zeros(C + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(keep.sum(1), 0)
    out = Batch(x=data.x[node], edge_index=edge_index, batch=copy, ptr=ptr)
    if getattr(data, "edge_attr", None) is not None:
        out.edge_attr = data.edge_attr[e_id]
    out._num_graphs = C
    return out


class _EvalMode:
    """Evaluation mode and no autograd for the duration; restores the training flag."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        self.grad.__exit__(*exc)
        return False


def _probabilities(model, data) -> Tensor:
    return torch.softmax(model(data).float(), dim=-1)


def attention_importance(model, data, target_class: int | None = None) -> np.ndarray:
    """Attention score of every nucleus (RSF+Attention, Sec. III-F): (N,), summing to 1
    (softmax attention) or each in (0, 1) (sigmoid gates).

    With class-wise attention (one branch per class) the scores are those of the branch of
    ``target_class`` (default: the predicted class): what the model looked at to call it.

    Raises:
        ValueError: the model has no attention layer.
    """
    if getattr(model, "attention", None) is None:
        name = getattr(getattr(model, "model_config", None), "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no attention layer; use importance='occlusion' instead"
        )
    with _EvalMode(model):
        if target_class is not None and getattr(model, "branches", 1) > 1:
            if not 0 <= int(target_class) < model.num_classes:
                raise ValueError(f"target_class {target_class} out of range")
            _, _, weights = model.forward_features(data, return_attention=True)
            attention = weights[:, int(target_class)]
        else:
            _, attention = model(data, return_attention=True)
    return attention.float().cpu().numpy()


def _attention_and_probabilities(model, data, target_class: int | None):
    """``(probabilities (classes,) float64, attention (N,) float32)`` of one graph from one
    forward pass (``forward_features`` then ``forward_head``), the attention of the branch
    :func:`attention_importance` reads; None for models without those parts or attention."""
    if getattr(model, "attention", None) is None or not all(
        hasattr(model, n) for n in ("forward_features", "forward_head")
    ):
        return None
    with _EvalMode(model):
        x1, a1, weights = model.forward_features(data, return_attention=True)
        logits = model.forward_head(x1, a1)
    if weights is None:
        return None
    probs = torch.softmax(logits.float(), dim=-1)[0]
    branches = getattr(model, "branches", 1)
    if branches > 1:
        target = int(probs.argmax()) if target_class is None else int(target_class)
        if not 0 <= target < probs.numel():
            raise ValueError(f"target_class {target} out of range")
        attention = weights[:, target]
    else:
        attention = weights[:, 0]
    return probs.cpu().numpy().astype(np.float64), attention.float().cpu().numpy()


def occlusion_importance(
    model,
    data,
    *,
    k: int = 1,
    target_class: int | None = None,
    batch_size: int = 128,
    method: str = "auto",
) -> np.ndarray:
    r"""Occlusion importance of every nucleus (Sureka et al., 2020, eq. 5): (N,) float32.

    :math:`\mathrm{score}_i = p(M(G)) - p(M(G_i))`, p the probability of ``target_class``
    (default: the class predicted on G) and :math:`G_i` the graph without nucleus i, its
    k-hop neighbours (hops along edges in either direction) and all their edges. A positive
    score: the region supports the class. A graph left without nuclei gets the model's
    prediction for an empty graph.

    Args:
        model: a graph model (``kind="graph"``) taking a PyG ``Data``/``Batch``.
        data: one graph, ``Data`` with x (N, F), edge_index (2, E), edge_attr (E, L), on
            the model's device.
        k: hops occluded around each nucleus (the paper uses 1; 2 and 3 also work).
        target_class: class whose probability is explained.
        batch_size: occluded graphs handled together (memory vs. speed).
        method: ``"incremental"`` (the exact engine of :mod:`histoview.explain.occlusion`,
            RSF networks on the CPU), ``"batched"`` (the definition, one forward pass per
            chunk of occluded graphs) or ``"auto"`` (the engine where it applies).

    The engine is checked on every call: its logits for the full graph and for three
    occluded graphs must match the model's forward pass (within ``CHECK_RTOL`` and
    ``CHECK_ATOL``); otherwise it warns (``RuntimeWarning``) and the scores come from the
    definition.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if (getattr(data, "num_graphs", None) or 1) > 1:
        raise ValueError("occlusion explains one graph at a time; got a batch of several")
    if method not in ("auto", "incremental", "batched"):
        raise ValueError(f"method must be 'auto', 'incremental' or 'batched', got {method!r}")
    if method == "auto":
        method = "incremental" if supports_incremental(model) else "batched"
    elif method == "incremental" and not supports_incremental(model):
        raise ValueError(
            f"incremental occlusion needs an RSF network on the CPU, got {type(model).__name__}"
        )
    N = data.x.size(0)
    if N == 0:
        return np.zeros(0, np.float32)
    with _EvalMode(model):
        full = model(data).float()[0]
        target = int(full.argmax()) if target_class is None else int(target_class)
        if not 0 <= target < full.numel():
            raise ValueError(f"target_class {target} out of range for {full.numel()} classes")
        logits = None
        if method == "incremental":
            logits = _incremental_logits(model, data, k, full, batch_size)
        if logits is None:
            neighbours = Neighbours(data.edge_index, N)
            logits = _occluded_logits(model, data, neighbours, np.arange(N), k, batch_size)
        p = torch.softmax(logits, -1)[:, target]
        scores = torch.softmax(full, -1)[target] - p
    return scores.cpu().numpy().astype(np.float32)


def _occluded_logits(model, data, neighbours: Neighbours, centres, k: int, batch_size=128):
    """Eq. 5's occluded graphs by definition: the model's logits (C, classes) on the graphs
    without each centre's k-hop ball, ``batch_size`` graphs per batch and forward pass."""
    out = []
    for start in range(0, len(centres), batch_size):
        chunk = centres[start : start + batch_size]
        copy, node, _, _ = neighbours.balls(chunk, k)
        keep = torch.ones(len(chunk), data.x.size(0), dtype=torch.bool)
        keep[torch.from_numpy(copy), torch.from_numpy(node)] = False
        out.append(model(occluded_graphs(data, keep.to(data.x.device))).float())
    return torch.cat(out)


def _incremental_logits(model, data, k: int, full: Tensor, batch_size: int):
    """The logits (N, classes) of all occluded graphs from the incremental engine, or None
    (with a warning) where it disagrees with the model's forward pass.

    Checked: the full graph, and the occluded graphs of three nuclei (the one whose
    occlusion changes the logits most, the one with the most and the one with the fewest
    neighbours). Graphs that lost nearly all pooling weight are recomputed by
    definition (the engine's subtraction would lose float32 precision there).
    """
    engine = IncrementalOcclusion(model, data)
    if not _agree(engine.full_logits, full):
        return _disagreement("the full graph")
    N = data.x.size(0)
    order = engine.neighbours.local_order()
    logits = torch.empty(N, full.numel())
    unstable = []
    for start in range(0, N, batch_size):
        centres = order[start : start + batch_size]
        logits[torch.from_numpy(centres)], redo = engine.logits(centres, k)
        unstable.append(centres[redo])
    unstable = np.concatenate(unstable)
    if unstable.size:
        direct = _occluded_logits(model, data, engine.neighbours, unstable, k, batch_size)
        logits[torch.from_numpy(unstable)] = direct
    degree = np.diff(engine.neighbours.ptr)
    largest = int((logits - full).abs().max(1).values.argmax())
    checked = np.unique([largest, int(degree.argmax()), int(degree.argmin())])
    expected = _occluded_logits(model, data, engine.neighbours, checked, k)
    if not _agree(logits[torch.from_numpy(checked)], expected):
        return _disagreement(f"the occluded graphs of nuclei {checked.tolist()}")
    return logits


def _agree(got: Tensor, expected: Tensor) -> bool:
    return bool(torch.allclose(got, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL))


def _disagreement(where: str) -> None:
    warnings.warn(
        f"incremental occlusion disagrees with the model's forward pass on {where} (the model's "
        "arithmetic differs from what histoview.explain.occlusion assumes); using the "
        "definition instead, which is much slower",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def explain_graph(
    model,
    graph,
    *,
    importance: str = "attention",
    k: int = 1,
    target_class: int | None = None,
    classes: tuple[str, ...] | None = None,
    checkpoint_sha256: str | None = None,
    synthetic: bool = False,
    image_shape: tuple[int, int] | None = None,
    outlines: tuple = (),
    batch_size: int = 128,
) -> Explanation:
    """Explain a graph model's decision on one nuclei graph, one value per nucleus.

    Args:
        model: a registered graph model (RSF, RSF+Edge, RSF+Attention).
        graph: a :class:`~histoview.preprocessing.graph.NucleiGraph`.
        importance: ``"attention"`` (RSF+Attention only) or ``"occlusion"`` (eq. 5).
        k: occlusion hops.
        target_class: class explained (default: the predicted one). Attention does not
            depend on it.
        classes: class names (default ``("class 0", "class 1", ...)``).
        image_shape: (height, width) of the image; default: the nuclei's bounding box.
        outlines: per-nucleus polygons for rasterising.
    """
    if importance not in ("attention", "occlusion"):
        raise ValueError(f"importance must be 'attention' or 'occlusion', got {importance!r}")
    device = next(model.parameters()).device
    data = graph.to_pyg().to(device)
    both = (
        _attention_and_probabilities(model, data, target_class)
        if importance == "attention"
        else None
    )
    if both is not None:  # one forward pass for the prediction and the attention
        probs, values = both
    else:
        with _EvalMode(model):
            probs = _probabilities(model, data)[0].cpu().numpy().astype(np.float64)
    target = int(np.argmax(probs)) if target_class is None else int(target_class)
    if both is None and importance == "attention":
        values = attention_importance(model, data, target)
    elif importance == "occlusion":
        values = occlusion_importance(model, data, k=k, target_class=target, batch_size=batch_size)
    centroids = np.asarray(graph.centroids, np.float64).reshape(-1, 2)
    if image_shape is None:
        top = np.ceil(centroids.max(0)) + 1 if len(centroids) else np.ones(2)
        image_shape = (int(top[0]), int(top[1]))
    feats = np.asarray(graph.node_features)
    features = {name: feats[:, i].copy() for i, name in enumerate(graph.feature_names)}
    geometry = NucleiPoints(
        centroids=centroids,
        image_shape=tuple(int(v) for v in image_shape),
        edge_index=np.asarray(graph.edge_index, np.int64),
        edge_weight=np.asarray(graph.edge_weight, np.float32),
        outlines=tuple(outlines),
        features=features,
    )
    config = getattr(model, "model_config", None)
    if classes is None:
        classes = tuple(f"class {i}" for i in range(len(probs)))
    classes = tuple(classes)
    if len(classes) != len(probs):
        raise ValueError(f"{len(classes)} class names for a model with {len(probs)} outputs")
    return Explanation(
        method="graph",
        model=config.name if config is not None else type(model).__name__,
        classes=classes,
        probabilities=probs,
        target_class=target,
        values=np.asarray(values, np.float32),
        geometry=geometry,
        checkpoint_sha256=checkpoint_sha256,
        synthetic=synthetic,
        extra={
            "importance": importance,
            # what an attention value means: a gate in (0, 1), or a weight summing to 1
            "attention_gate": model.attention.gate if importance == "attention" else None,
            "k": int(k) if importance == "occlusion" else None,
            "num_nuclei": int(len(centroids)),
            "num_edges": int(np.asarray(graph.edge_index).shape[1]),
        },
    )
