"""Layers of the robust spatial filtering (RSF) nuclei-graph networks.

Sureka et al., 2020, "Visualization for histopathology images using graph convolutional
neural networks" (arXiv:2006.09464), Sec. III-C to E, adapting the RSF convolution of
Such et al., 2017; equation numbers below are Sureka et al.'s.

* :class:`RSFConv` - vertex convolution of eq. 2 on a sparse graph (PyG ``MessagePassing``);
* :class:`DenseRSFConv` - the same convolution on dense, batched (pooled) graphs;
* :class:`EdgeConv` - the edge convolution of eq. 4 (RSF+Edge) on dense graphs;
* :class:`NodeAttention` - the per-nucleus attention of RSF+Attention (Sec. III-E);
* :func:`sparse_embed_pool` / :func:`dense_embed_pool` - graph embed pooling of eq. 3.

Edge features are multi-channel: ``edge_attr`` is (E, L) on sparse graphs and adjacency
tensors are (B, N, N, L) with ``adj[b, i, j]`` the features of the edge j -> i (PyG's
source-to-target convention: node i aggregates from j).

This module imports torch_geometric at the top; :mod:`histoview.models.graph_nets` imports
it only when a graph model is built, so importing the model registry stays fast.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax, to_dense_batch

__all__ = [
    "DenseRSFConv",
    "EdgeConv",
    "NodeAttention",
    "RSFConv",
    "channel_blocks",
    "dense_embed_pool",
    "rsf_adjacency",
    "sparse_csr",
    "sparse_embed_pool",
]


class RSFConv(MessagePassing):
    r"""Robust spatial filtering vertex convolution (Sureka et al., 2020, eq. 2; Such et al., 2017).

    .. math::
        V_{conv} = \sum_{i=1}^{F} H^i V^i_{in} + b, \qquad
        H^i = h_{i0} I + \sum_{l=1}^{L} h_{il} A_l,

    i.e. per node :math:`\mathbf{x}'_n = \Theta_0 \mathbf{x}_n + \sum_{m \in N(n)}
    \sum_{l=1}^{L} e_{nm,l}\, \Theta_l \mathbf{x}_m + \mathbf{b}`: the filter applied to a
    neighbour is a (linear) function of the edge's L features. This equals PyG's
    :class:`~torch_geometric.nn.conv.NNConv` with a bias-free linear edge network
    (``nn=Linear(L, F * F', bias=False)``, ``aggr="add"``), computed as ``L`` shared
    transforms instead of one (F x F') matrix per edge.

    The work is split in :meth:`transform` (per node, the only matrix products) and
    :meth:`aggregate` (per edge, linear in the transformed features), so the occlusion
    explainer can propagate exact feature *differences* through the layer.

    Args:
        in_channels: node feature size F.
        out_channels: output feature size F'.
        edge_dim: number L of edge features.
        bias: learn the additive bias b.

    Shapes:
        - input: node features (N, F), edge indices (2, E), edge features (E, L)
        - output: node features (N, F')
    """

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int, bias: bool = True):
        super().__init__(aggr="add", node_dim=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.edge_dim = edge_dim
        self.lin_root = nn.Linear(in_channels, out_channels, bias=False)  # h_i0
        self.lin_edge = nn.Linear(in_channels, edge_dim * out_channels, bias=False)  # h_il
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_root.reset_parameters()
        self.lin_edge.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-node linear maps: the root term (N, F') and the L edge-feature terms (N, L, F')."""
        return self.lin_root(x), self.lin_edge(x).view(-1, self.edge_dim, self.out_channels)

    def aggregate_transformed(
        self, y: Tensor, adj: Tensor, edge_attr: Tensor | None = None
    ) -> Tensor:
        """:math:`\\sum_m \\sum_l e_{nm,l}\\, y_{m,l}` per target node n (linear in ``y``).

        ``adj`` is the operator of :func:`rsf_adjacency` (a sparse (N_dst, N_src * L)
        matrix: one sparse product), or ``edge_index`` (2, E) with ``edge_attr`` (E, L), from
        which that operator is built.
        """
        if not (adj.is_sparse or adj.layout == torch.sparse_csr):
            adj = rsf_adjacency(adj, edge_attr, y.size(0))
        return self.propagate(adj, y=y.reshape(-1, y.size(-1)))

    def message_and_aggregate(self, adj_t: Tensor, y: Tensor) -> Tensor:
        return torch.sparse.mm(adj_t, y)

    def forward(self, x: Tensor, adj: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        """``adj``: the :func:`rsf_adjacency` operator, or ``edge_index`` with ``edge_attr``."""
        root, y = self.transform(x)
        out = root + self.aggregate_transformed(y, adj, edge_attr)
        return out if self.bias is None else out + self.bias

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"edge_dim={self.edge_dim})"
        )


class DenseRSFConv(nn.Module):
    r"""The RSF vertex convolution of eq. 2 on dense batched graphs (after pooling).

    :math:`X' = X \Theta_0 + \sum_{l=1}^{L} A_l X \Theta_l + b`.

    Args:
        in_channels: node feature size F.
        out_channels: output feature size F'.
        edge_dim: number L of adjacency channels.

    Shapes:
        - input: node features (B, N, F), adjacency (B, N, N, L)
        - output: node features (B, N, F')
    """

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int, bias: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.edge_dim = edge_dim
        self.lin_root = nn.Linear(in_channels, out_channels, bias=False)
        self.lin_edge = nn.Linear(in_channels, edge_dim * out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_root.reset_parameters()
        self.lin_edge.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        B, N, _ = x.shape
        y = self.lin_edge(x).view(B, N, self.edge_dim, self.out_channels)
        # sum_l A_l (X Theta_l): fold (j, l) into one contraction axis.
        agg = torch.bmm(adj.reshape(B, N, N * self.edge_dim), y.reshape(B, N * self.edge_dim, -1))
        out = self.lin_root(x) + agg
        return out if self.bias is None else out + self.bias

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"edge_dim={self.edge_dim})"
        )


class EdgeConv(nn.Module):
    r"""Edge convolution of RSF+Edge (Sureka et al., 2020, eq. 4, after Gadiya et al.).

    :math:`A_{out} = \phi(W X)`, where for every ordered pair (i, j) the input X is the
    concatenation of the edge's features and both endpoints' vertex features:
    :math:`a'_{ij} = \mathrm{ReLU}(W [a_{ij} \,\|\, x_i \,\|\, x_j] + c)`. The linear map is
    applied as three blocks, so no (B, N, N, L + 2F) tensor is built.

    Args:
        edge_dim: input edge features L.
        node_channels: vertex features F.
        out_channels: output edge features L'.

    Shapes:
        - input: node features (B, N, F), adjacency (B, N, N, L)
        - output: adjacency (B, N, N, L')
    """

    def __init__(self, edge_dim: int, node_channels: int, out_channels: int):
        super().__init__()
        self.edge_dim = edge_dim
        self.node_channels = node_channels
        self.out_channels = out_channels
        self.lin_edge = nn.Linear(edge_dim, out_channels)
        self.lin_dst = nn.Linear(node_channels, out_channels, bias=False)
        self.lin_src = nn.Linear(node_channels, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_edge.reset_parameters()
        self.lin_dst.reset_parameters()
        self.lin_src.reset_parameters()

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        out = self.lin_edge(adj) + self.lin_dst(x).unsqueeze(2) + self.lin_src(x).unsqueeze(1)
        return F.relu(out)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(edge_dim={self.edge_dim}, "
            f"node_channels={self.node_channels}, out_channels={self.out_channels})"
        )


class NodeAttention(nn.Module):
    r"""Per-nucleus attention of RSF+Attention (Sureka et al., 2020, Sec. III-E and Fig. 1).

    The scoring network of Ilse et al.'s attention MIL (the ``gate_nn`` of PyG's
    :class:`~torch_geometric.nn.aggr.AttentionalAggregation`), :math:`e_{n,k} =
    \mathbf{w}_k^\top \tanh(V \mathbf{z}_n)`, turned into attention in one of two ways:

    * ``gate="softmax"`` (Ilse et al.): :math:`a_{n,k} = \mathrm{softmax}_n(e_{n,k})`, the
      scores of one graph sum to 1 per branch k. Nuclei compete: a nucleus's attention
      depends on all others of its graph.
    * ``gate="sigmoid"``: an independent gate per nucleus, :math:`a_{n,k} =
      \sigma(e_{n,k}) \in (0, 1)`, how much of the nucleus enters the pooled graph
      (averaged over the graph's nuclei by the pooling). Read on its own scale: 1 means the
      nucleus is fully used, 0 that the decision ignores it, whatever the other nuclei do.

    With several branches (one per class, as in CLAM's multi-branch attention; Lu et al.
    2021) each class has its own scores over a shared tanh layer. :meth:`score` gives the
    logits :math:`e` (a per-node function, which the occlusion explainer needs).

    Args:
        in_channels: node feature size F.
        hidden_channels: size of the tanh layer.
        branches: attention branches K.
        gate: ``"softmax"`` or ``"sigmoid"``.

    Shapes:
        - input: node features (N, F), graph index (N,)
        - output: attention (N, K): summing to 1 per graph and branch (softmax), or in (0, 1)
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, branches: int = 1, gate: str = "softmax"
    ):
        super().__init__()
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate must be 'softmax' or 'sigmoid', got {gate!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.branches = int(branches)
        self.gate = gate
        self.lin = nn.Linear(in_channels, hidden_channels)
        self.score_lin = nn.Linear(hidden_channels, self.branches)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        self.score_lin.reset_parameters()

    def score(self, x: Tensor) -> Tensor:
        """Attention logits (N, K)."""
        return self.score_lin(torch.tanh(self.lin(x)))

    def normalise(self, score: Tensor, batch: Tensor) -> Tensor:
        """Attention (N, K) from the logits (N, K) of :meth:`score`."""
        if self.gate == "sigmoid":
            return torch.sigmoid(score)
        return softmax(score, batch, num_nodes=score.size(0), dim=0)

    def forward(self, x: Tensor, batch: Tensor) -> Tensor:
        return self.normalise(self.score(x), batch)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, hidden={self.hidden_channels}, "
            f"branches={self.branches}, gate={self.gate!r})"
        )


def rsf_adjacency(edge_index: Tensor, edge_attr: Tensor, num_nodes: int) -> Tensor:
    r"""The edge-feature adjacency :math:`[A_1 \cdots A_L]` of eq. 2 as one sparse CSR matrix.

    Entry ``(i, j * L + l)`` holds feature l of the edge j -> i, so that
    ``adj @ y.reshape(N * L, F)`` computes :math:`\sum_l A_l Y_l` in one sparse product (much
    faster on CPU than gather-scatter). Built once per graph and shared by all layers.

    Shapes:
        - input: edge_index (2, E), edge_attr (E, L)
        - output: sparse CSR (N, N * L)
    """
    num_edges, edge_dim = edge_attr.shape
    src, dst = edge_index
    order = torch.argsort(dst, stable=True)
    counts = torch.bincount(dst, minlength=num_nodes) * edge_dim
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_attr.device)
    crow[1:] = torch.cumsum(counts, 0)
    lane = torch.arange(edge_dim, device=edge_attr.device)
    col = (src[order].unsqueeze(1) * edge_dim + lane).reshape(-1)
    val = edge_attr[order].reshape(-1)
    return sparse_csr(crow, col, val, (num_nodes, num_nodes * edge_dim))


def sparse_csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor`` without invariant checks (callers build valid indices) and
    without torch's one-time "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def channel_blocks(s: Tensor, edge_dim: int) -> Tensor:
    """``s`` (N, C) spread to (N * L, C * L) with ``s[j]`` in channel block l of row j * L + l,
    so that ``adj @ channel_blocks(s)`` gives :math:`A_l S` for every channel l at once."""
    eye = torch.eye(edge_dim, dtype=s.dtype, device=s.device)
    return (s[:, None, :, None] * eye[None, :, None, :]).reshape(-1, s.size(1) * edge_dim)


def sparse_embed_pool(
    z: Tensor,
    s: Tensor,
    weight: Tensor,
    adj: Tensor,
    edge_dim: int,
    batch: Tensor,
    num_graphs: int,
) -> tuple[Tensor, Tensor]:
    r"""Graph embed pooling of eq. 3 from a sparse graph to dense cluster graphs.

    With the assignment :math:`V_{emb} = S = \mathrm{softmax}(\cdot)` (N, N'), per graph
    and per column w of the node weights:

    .. math::
        V_{out} = S^\top \mathrm{diag}(w) V_{in}, \qquad
        A_{out,l} = S^\top \mathrm{diag}(w) A_l S,

    where the weights are normalised per graph: 1/n (n nuclei), or the attention of
    RSF+Attention (one column per attention branch): softmax attention (summing to 1) or
    sigmoid gates divided by n. Eq. 3 is the case w = 1; the normalisation keeps pooled
    features independent of the number of nuclei (hundreds to thousands). The attention weights *both* outputs: a nucleus with little attention
    contributes neither its embedding nor its relations to the pooled graph, so the
    classifier sees only what the attention selects. Both outputs are sums over nodes of
    local terms (:math:`A_{out,l} = \sum_i w_i\, s_i \otimes (A_l S)_i`), which is what
    makes exact incremental occlusion possible. An empty graph pools to zeros.

    Args:
        z: embeddings :math:`V_{in}` (N, F).
        s: assignments, rows summing to 1 (N, N').
        weight: node weights (N, K), each column normalised per graph (see above).
        adj: :func:`rsf_adjacency` operator (N, N * L).
        edge_dim: L.
        batch: graph of each node (N,).
        num_graphs: B.

    Shapes:
        - output: V_out (B, K, N', F), A_out (B, K, N', N', L)
    """
    n_nodes, n_clusters = s.shape
    branches = weight.size(1)
    ws = (weight.unsqueeze(2) * s.unsqueeze(1)).view(n_nodes, branches * n_clusters)
    ws, _ = to_dense_batch(ws, batch, batch_size=num_graphs)
    zd, _ = to_dense_batch(z, batch, batch_size=num_graphs)
    x_out = torch.bmm(ws.transpose(1, 2), zd)
    m = torch.sparse.mm(adj, channel_blocks(s, edge_dim))
    md, _ = to_dense_batch(m.reshape(-1, n_clusters * edge_dim), batch, batch_size=num_graphs)
    a_out = torch.bmm(ws.transpose(1, 2), md)
    return (
        x_out.view(num_graphs, branches, n_clusters, -1),
        a_out.view(num_graphs, branches, n_clusters, n_clusters, edge_dim),
    )


def dense_embed_pool(x: Tensor, adj: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    r"""Graph embed pooling of eq. 3 on dense graphs: :math:`V_{out} = S^\top V_{in}`,
    :math:`A_{out,l} = S^\top A_l S` with ``s`` already softmax-normalised.

    Equals PyG's :func:`~torch_geometric.nn.dense.dense_diff_pool` (DiffPool), extended to
    L adjacency channels.

    Shapes:
        - input: x (B, N, F), adj (B, N, N, L), s (B, N, N')
        - output: x (B, N', F), adj (B, N', N', L)
    """
    x_out = torch.bmm(s.transpose(1, 2), x)
    adj_out = torch.einsum("bip,bijl,bjq->bpql", s, adj, s)
    return x_out, adj_out
