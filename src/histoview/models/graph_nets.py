r"""Nuclei-graph classifiers RSF, RSF+Edge and RSF+Attention (Sureka et al., 2020, Table I).

Sureka et al., "Visualization for histopathology images using graph convolutional neural
networks", arXiv:2006.09464 (``docs/citations.md``); equation, section and table numbers
below are theirs. All three follow Table I::

    RSF              RSF+Edge            RSF+Attention
    Vertex Conv 1    Vertex Conv 1       Vertex Conv 1
    Vertex Conv 2    Vertex Conv 2       Vertex Conv 2 + Attn
    Pooling 1        Pooling 1           Pooling 1
                     Edge Conv 1
    Vertex Conv 3    Vertex Conv 3       Vertex Conv 3
                     Edge Conv 2
    Pooling 2        Pooling 2           Pooling 2
                     Edge Conv 3
    FC 1-3           FC 1-3              FC 1-3

Vertex convolutions implement eq. 2 (:class:`~histoview.models.graph_layers.RSFConv`), the
pooling layers eq. 3 (graph embed pooling, i.e. DiffPool with a fixed number of soft
clusters: 8, then 4), edge convolutions eq. 4. Pooling 1 maps the sparse nuclei graph
(about 1,500 nuclei) to a dense graph of ``clusters[0]`` soft clusters; everything after it
is dense and batched. Activations: ReLU after each vertex convolution, softmax over clusters
for the assignments.

Why this pooling (the choice that makes occlusion exact): eq. 3 is a soft-cluster pooling
whose outputs are *sums over nuclei (and edges) of local terms*. As in DiffPool, Pooling 1's
assignment :math:`V_{emb} = \mathrm{softmax}(\mathrm{RSFConv}(V, A))` and the embeddings it
pools (Vertex Conv 2) both read Vertex Conv 1's output, so every per-nucleus term depends on
the nucleus's 2-hop neighbourhood only. Removing a few nuclei then changes the pooled graph
by a sum of local corrections, and occlusion importance (eq. 5) is computed exactly from
cached activations (:mod:`histoview.explain.occlusion`). Top-k, SAG or graclus pooling would make
every occluded graph a global recomputation, and a global softmax inside the node stage
would make every nucleus depend on all others.

Pooled vertex features and pooled adjacency are node-weighted sums (weights 1/n, or the
attention of RSF+Attention: attention "before the first pooling" decides how much each
nucleus, with its relations, contributes to it, Sec. III-E). The edge convolutions
of RSF+Edge act on the pooled dense graphs, where Table I places them.

The attention (Sec. III-E says only that it ranks vertices by importance) comes in two
forms (:class:`~histoview.models.graph_layers.NodeAttention`):

* ``attention_gate="softmax"`` (the default): Ilse et al.'s attention, summing to 1 over a
  graph's nuclei;
* ``attention_gate="sigmoid"`` with ``attention_sparsity`` > 0: an independent gate in
  (0, 1) per nucleus, the pooling averages the gated nuclei, and an L1 penalty on the gates
  (:meth:`RSFNet.regularization_loss`) keeps open only the gates the decision needs. The
  bundled RSF+Attention weights use it with ``attention_input="morphology"``.

Why the sigmoid gate, and what each choice selected on phantoms: ``docs/design-notes.md``
("Nuclei attention"); ``benchmarks/bench_graph_importance.py`` measures it.

The model API follows timm: ``forward_features(data)`` returns the pooled graph after
Pooling 1, ``forward_head(x, adj, pre_logits=False)`` the rest. ``forward(data)`` returns
logits (B, num_classes); RSF+Attention keeps the per-nucleus attention of its last forward
in ``last_attention`` (N,) and returns it with ``forward(data, return_attention=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histoview.models.registry import ModelConfig, register_model

SUREKA2020 = (
    "Sureka et al., Visualization for histopathology images using graph convolutional neural "
    "networks, arXiv:2006.09464 (2020), Sec. III-C to F, eqs. 2-5, Table I"
)


def graph_index(data) -> tuple[Tensor, int]:
    """``(batch, num_graphs)`` of a PyG ``Data`` (one graph) or ``Batch``; empty graphs count."""
    batch = getattr(data, "batch", None)
    n = data.x.size(0)
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=data.x.device), 1
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if n else 1
    return batch, int(num_graphs)


def edge_features(data, edge_dim: int) -> Tensor:
    """``data.edge_attr`` as float (E, L); zeros (0, L) for a graph without edges."""
    ea = getattr(data, "edge_attr", None)
    num_edges = data.edge_index.size(1)
    if ea is None:
        if num_edges:
            raise ValueError(f"graph has {num_edges} edges but no edge_attr (E, {edge_dim})")
        return data.x.new_zeros((0, edge_dim))
    ea = ea.view(-1, 1) if ea.dim() == 1 else ea
    if ea.size(1) != edge_dim:
        raise ValueError(f"model expects {edge_dim} edge features, graph has {ea.size(1)}")
    return ea.to(data.x.dtype)


class RSFNet(nn.Module):
    """RSF / RSF+Edge / RSF+Attention of Sureka et al., 2020, Table I (see the module docstring).

    Args:
        num_classes: number of output classes.
        in_channels: node features per nucleus (F).
        edge_dim: edge features per edge (L), e.g. weight ``1 - d/threshold`` of eq. 1 and
            normalised distance.
        hidden_channels: vertex features of Vertex Conv 1 and 2 (on the nuclei graph).
        dense_channels: vertex features of Vertex Conv 3 (on the pooled graph).
        clusters: soft clusters of Pooling 1 and Pooling 2.
        fc_channels: widths of FC 1 and FC 2 (FC 3 gives the logits).
        edge_channels: edge features after each edge convolution; set for RSF+Edge.
        attention_channels: hidden size of the attention gate; set for RSF+Attention.
        classwise_attention: one attention branch per class (see the module docstring);
            False: Table I's single attention layer.
        attention_gate: ``"softmax"`` (attention sums to 1 over a graph's nuclei, Ilse et
            al.) or ``"sigmoid"`` (an independent gate in (0, 1) per nucleus; the pooling
            averages the gated nuclei). See :class:`~histoview.models.graph_layers.NodeAttention`.
        attention_sparsity: weight of an L1 penalty on the sigmoid gates during training
            (:meth:`regularization_loss`, the mean gate over the batch's nuclei): the model
            is pushed to keep only the nuclei its decision needs, so the gates rank evidence
            rather than background. 0 disables it.
        attention_input: what the attention reads: ``"embedding"``, the Vertex Conv 2 output
            (Table I's "Vertex Conv 2 + Attn"; it mixes in each nucleus's 2-hop
            neighbourhood); ``"morphology"``, the nucleus's own standardised features (the
            text's "at the input to highlight important nuclei directly", Sec. III-E); or
            ``"both"``. The pooled embeddings carry the neighbourhood in every case.
        dropout: dropout before FC 2 and FC 3.

    Shapes:
        - input: ``Data``/``Batch`` with x (N, F), edge_index (2, E), edge_attr (E, L), batch (N,)
        - output: logits (B, num_classes)
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        in_channels: int = 13,
        edge_dim: int = 4,
        hidden_channels: int = 128,
        dense_channels: int = 64,
        clusters: Sequence[int] = (8, 4),
        fc_channels: Sequence[int] = (512, 128),
        edge_channels: int | None = None,
        attention_channels: int | None = None,
        classwise_attention: bool = False,
        attention_gate: str = "softmax",
        attention_sparsity: float = 0.0,
        attention_input: str = "embedding",
        dropout: float = 0.2,
    ):
        super().__init__()
        # torch_geometric is imported only once a graph model is built (it takes seconds).
        from histoview.models.graph_layers import DenseRSFConv, EdgeConv, NodeAttention, RSFConv

        h, d, (c1, c2) = hidden_channels, dense_channels, clusters
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.edge_dim = edge_dim
        self.clusters = (int(c1), int(c2))
        # Vertex Conv 1, 2 (eq. 2) and the assignment of Pooling 1 (eq. 3) on the nuclei graph.
        self.conv1 = RSFConv(in_channels, h, edge_dim)
        self.conv2 = RSFConv(h, h, edge_dim)
        self.branches = num_classes if (attention_channels and classwise_attention) else 1
        if attention_input not in ("embedding", "morphology", "both"):
            raise ValueError(
                f"attention_input must be 'embedding', 'morphology' or 'both', got {attention_input!r}"
            )
        self.attention_input = attention_input
        att_in = {"embedding": h, "morphology": in_channels, "both": h + in_channels}[
            attention_input
        ]
        self.attention = (
            NodeAttention(att_in, attention_channels, self.branches, gate=attention_gate)
            if attention_channels
            else None
        )
        if attention_sparsity < 0 or (attention_sparsity and attention_gate != "sigmoid"):
            raise ValueError("attention_sparsity needs attention_gate='sigmoid' and must be >= 0")
        self.attention_sparsity = float(attention_sparsity)
        self._gates: Tensor | None = None
        self.assign1 = RSFConv(h, c1, edge_dim)
        # Dense part after Pooling 1.
        dense_dim = edge_channels or edge_dim
        self.edge1 = EdgeConv(edge_dim, h, edge_channels) if edge_channels else None
        self.conv3 = DenseRSFConv(h, d, dense_dim)
        self.edge2 = EdgeConv(edge_channels, d, edge_channels) if edge_channels else None
        self.assign2 = DenseRSFConv(d, c2, dense_dim)
        self.edge3 = EdgeConv(edge_channels, d, edge_channels) if edge_channels else None
        readout = c2 * d + (c2 * c2 * edge_channels if edge_channels else 0)
        f1, f2 = fc_channels
        self.head = nn.Sequential(
            nn.Linear(readout, f1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(f1, f2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(f2, num_classes),
        )
        # Node-feature standardisation (morphology features span very different scales):
        # per-nucleus, so it keeps occlusion exact; set from training data, saved with the
        # weights.
        self.register_buffer("node_mean", torch.zeros(in_channels))
        self.register_buffer("node_std", torch.ones(in_channels))
        self.last_attention: Tensor | None = None

    def set_node_normalisation(self, mean, std) -> None:
        """Standardise node features as ``(x - mean) / std`` (e.g. training-set statistics)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).view(-1)
        std = torch.as_tensor(std, dtype=torch.float32).view(-1).clamp(min=1e-6)
        if mean.numel() != self.in_channels or std.numel() != self.in_channels:
            raise ValueError(f"need {self.in_channels} means and standard deviations")
        self.node_mean.copy_(mean)
        self.node_std.copy_(std)

    def normalise_nodes(self, x: Tensor) -> Tensor:
        return (x.float() - self.node_mean) / self.node_std

    # ------------------------------------------------------------------ nuclei graph
    def node_stage(self, x: Tensor, adj: Tensor) -> dict[str, Tensor]:
        """Vertex Conv 1 and 2 and the assignment of Pooling 1 on the nuclei graph.

        As in DiffPool, the assignment :math:`S = \\mathrm{softmax}(\\mathrm{RSFConv}(V, A))`
        (eq. 3's :math:`V_{emb}`) and the pooled embeddings :math:`Z` = Vertex Conv 2(V, A)
        both read V = Vertex Conv 1's output, so every per-nucleus quantity that reaches
        Pooling 1 depends on the nucleus's 2-hop neighbourhood only.

        Args:
            x: node features (N, F), raw (standardised here, see ``set_node_normalisation``).
            adj: :func:`~histoview.models.graph_layers.rsf_adjacency` operator (N, N * L).

        Returns:
            ``h1`` (N, H), ``z`` (N, H), ``s`` (N, C1) with rows summing to 1 and, with
            attention, the gate logits ``score`` (N, K) of the K attention branches.
        """
        xn = self.normalise_nodes(x)
        h1 = F.relu(self.conv1(xn, adj))
        z = F.relu(self.conv2(h1, adj))
        s = torch.softmax(self.assign1(h1, adj), dim=-1)
        out = {"h1": h1, "z": z, "s": s}
        if self.attention is not None:
            out["score"] = self.attention_score(z, xn)
        return out

    def attention_score(self, z: Tensor, xn: Tensor) -> Tensor:
        """Attention logits (N, K) from what ``attention_input`` names: the Vertex Conv 2
        embeddings ``z`` (N, H), the nuclei's own standardised features ``xn`` (N, F), or
        both."""
        inputs = {"embedding": (z,), "morphology": (xn,), "both": (z, xn)}[self.attention_input]
        return self.attention.score(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0])

    def forward_features(self, data, *, return_attention: bool = False):
        """Up to Pooling 1, per attention branch: pooled vertex features (B, K, C1, H) and
        adjacency (B, K, C1, C1, L) (K = 1 without class-wise attention); with
        ``return_attention`` also the attention (N, K) (softmax weights or sigmoid gates;
        None without attention)."""
        from torch_geometric.utils import scatter

        from histoview.models.graph_layers import rsf_adjacency, sparse_embed_pool

        x = data.x.float()
        batch, num_graphs = graph_index(data)
        adj = rsf_adjacency(data.edge_index, edge_features(data, self.edge_dim), x.size(0))
        nodes = self.node_stage(x, adj)
        counts = scatter(x.new_ones(x.size(0)), batch, dim=0, dim_size=num_graphs)
        mean = (1.0 / counts[batch]).unsqueeze(1)
        attention = None
        if self.attention is None:
            weight = mean
        else:
            attention = self.attention.normalise(nodes["score"], batch)
            self._gates = attention if self.attention.gate == "sigmoid" else None
            weight = attention * mean if self.attention.gate == "sigmoid" else attention
        x1, a1 = sparse_embed_pool(
            nodes["z"], nodes["s"], weight, adj, self.edge_dim, batch, num_graphs
        )
        if return_attention:
            return x1, a1, attention
        return x1, a1

    def regularization_loss(self) -> Tensor | float:
        """``attention_sparsity`` times the mean sigmoid gate of the last forward pass (added
        to the training loss by the training engine); 0 without it."""
        if not self.attention_sparsity or self._gates is None:
            return 0.0
        return self.attention_sparsity * self._gates.mean()

    # ------------------------------------------------------------------ dense part
    def forward_head(self, x: Tensor, adj: Tensor, *, pre_logits: bool = False) -> Tensor:
        """From the pooled graphs to logits (B, num_classes).

        ``x`` (B, K, C1, H) and ``adj`` (B, K, C1, C1, L), one pooled graph per attention
        branch (or (B, C1, H) and (B, C1, C1, L) for K = 1). The layers after Pooling 1 run on
        every branch's graph; with class-wise attention the logit of class c is the one
        computed from branch c's graph. ``pre_logits``: the FC 2 features (B, K * FC 2).
        """
        from histoview.models.graph_layers import dense_embed_pool

        if x.dim() == 3:
            x, adj = x.unsqueeze(1), adj.unsqueeze(1)
        B, K = x.shape[:2]
        x, adj = x.flatten(0, 1), adj.flatten(0, 1)
        if self.edge1 is not None:
            adj = self.edge1(x, adj)
        x = F.relu(self.conv3(x, adj))
        if self.edge2 is not None:
            adj = self.edge2(x, adj)
        s = torch.softmax(self.assign2(x, adj), dim=-1)
        x, adj = dense_embed_pool(x, adj, s)
        feats = x.flatten(1)
        if self.edge3 is not None:
            feats = torch.cat([feats, self.edge3(x, adj).flatten(1)], dim=1)
        if pre_logits:
            return self.head[:-1](feats).view(B, -1)
        logits = self.head(feats).view(B, K, -1)
        return logits[:, 0] if K == 1 else logits.diagonal(dim1=1, dim2=2)

    def forward(self, data, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention`` also the attention (N,) of
        each nucleus for its graph's predicted class (the branch that made the call)."""
        x1, a1, weight = self.forward_features(data, return_attention=True)
        logits = self.forward_head(x1, a1)
        attention = None
        if weight is not None:
            if self.branches == 1:
                attention = weight[:, 0]
            else:
                batch, _ = graph_index(data)
                attention = weight.gather(1, logits.argmax(1)[batch].unsqueeze(1)).squeeze(1)
            self.last_attention = attention.detach()
        if return_attention:
            if attention is None:
                raise ValueError(f"{self.model_name} has no attention layer")
            return logits, attention
        return logits

    @property
    def model_name(self) -> str:
        config = getattr(self, "model_config", None)
        return config.name if config is not None else type(self).__name__


# ---------------------------------------------------------------------- registry

# Inputs of NucleiGraph.to_pyg(): 13 morphology features per nucleus
# (preprocessing.nuclei.FEATURE_NAMES) and 4 edge features (weight 1 - d/t of eq. 1, d/t,
# cos and sin of the edge direction; preprocessing.graph.EDGE_FEATURE_NAMES).
NODE_FEATURES, EDGE_FEATURES = 13, 4
_FULL = {
    "in_channels": NODE_FEATURES,
    "edge_dim": EDGE_FEATURES,
    "hidden_channels": 128,
    "dense_channels": 64,
    "clusters": (8, 4),
    "dropout": 0.2,
}
_TINY = {
    "in_channels": NODE_FEATURES,
    "edge_dim": EDGE_FEATURES,
    "hidden_channels": 8,
    "dense_channels": 8,
    "clusters": (4, 2),
    "fc_channels": (16, 8),
    "dropout": 0.0,
}
_VARIANTS: dict[str, dict[str, Any]] = {
    "rsf": {**_FULL, "fc_channels": (416, 128)},
    "rsf-edge": {**_FULL, "fc_channels": (352, 128), "edge_channels": 4},
    "rsf-attention": {**_FULL, "fc_channels": (400, 128), "attention_channels": 64},
    "test_rsf": dict(_TINY),
    "test_rsf_edge": {**_TINY, "edge_channels": 3},
    "test_rsf_attention": {**_TINY, "attention_channels": 8},
}


def _config(name: str) -> ModelConfig:
    base = name.removeprefix("test_").replace("_", "-")
    label = {"rsf": "RSF", "rsf-edge": "RSF+Edge", "rsf-attention": "RSF+Attention"}[base]
    return ModelConfig(
        name=name,
        kind="graph",
        classifier="head",
        paper=f"{SUREKA2020}: {label}",
        defaults=dict(_VARIANTS[name]),
        explanation="attention" if base == "rsf-attention" else None,
        test_only=name.startswith("test_"),
    )


@register_model(_config("rsf"))
def rsf(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    """RSF: robust spatial filtering (eq. 2) with graph embed pooling (eq. 3)."""
    return RSFNet(num_classes, **kwargs)


@register_model(_config("rsf-edge"))
def rsf_edge(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    """RSF+Edge: RSF with edge convolutions (eq. 4) after each pooling and Vertex Conv 3."""
    return RSFNet(num_classes, **kwargs)


@register_model(_config("rsf-attention"))
def rsf_attention(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    """RSF+Attention: RSF with per-nucleus attention before Pooling 1 (Sec. III-E)."""
    return RSFNet(num_classes, **kwargs)


@register_model(_config("test_rsf"))
def tiny_rsf(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    return RSFNet(num_classes, **kwargs)


@register_model(_config("test_rsf_edge"))
def tiny_rsf_edge(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    return RSFNet(num_classes, **kwargs)


@register_model(_config("test_rsf_attention"))
def tiny_rsf_attention(num_classes: int = 2, **kwargs: Any) -> RSFNet:
    return RSFNet(num_classes, **kwargs)
