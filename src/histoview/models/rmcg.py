"""RMCG: relation-aware multi-channel attention graph convolutional network.

The RMCG paper (Databiox breast cancer grades; its authors and title are not in our copy,
see ``docs/citations.md``), Method and Fig. 2, has three modules: (1) ResNet18 features with a
multi-channel attention mechanism; (2) an image topology over feature-map
pixels built from mutual information; (3) stacked graph convolution with
attention, graph pooling and a classifier, trained with cross-entropy plus
``lambda / 2 * ||w||^2`` on the last layer (Eq. 7).

The paper's equations for (1) and (2) did not survive in the text we have, so
the pieces below are our reading of its prose, documented where they are built:
:class:`MultiChannelAttention` and :func:`mutual_information_graph`.

The model's explanation is its graph-pooling attention over pixel nodes,
kept after every forward in ``model.last_node_attention`` (B, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histoview.models.cnn import ResNetTrunk
from histoview.models.pretrained import load_pretrained_backbone
from histoview.models.registry import ModelConfig, register_model

RMCG_PAPER = (
    "RMCG paper: relation-aware multi-channel attention based graph convolutional network "
    "for breast cancer image classification (Databiox), Method and Eq. 7"
)


class MultiChannelAttention(nn.Module):
    """Cross-channel attention at every pixel (RMCG paper, "Multi-channel Attention Mechanism").

    The C channels of a pixel are split into ``groups`` tokens of C / groups
    channels. Per the paper, keys and values are computed from the cross-channel
    query fusion: ``Q = W_q h + b_q``, ``K = W_k Q + b_k``, ``V = W_v Q + b_v``;
    ``A = softmax(Q K^T / sqrt(d))`` mixes the groups. The result is fused with
    the input by an element-wise gate (``h + sigmoid(W_g h + b_g) * A V``),
    then passed through a feed-forward network with a residual sum, as in the
    original attention block.

    Args:
        channels: C, channels per pixel.
        groups: number of channel groups (tokens); must divide C.
        dropout: dropout on the attention output.

    Shapes:
        (B, N, C) -> (B, N, C).
    """

    def __init__(self, channels: int, groups: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels})")
        self.channels, self.groups = channels, groups
        d = channels // groups
        self.query, self.key, self.value, self.gate = (nn.Linear(d, d) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, N, C = h.shape
        t = h.reshape(B * N, self.groups, C // self.groups)
        q = self.query(t)
        k, v = self.key(q), self.value(q)
        attn = torch.softmax(q @ k.transpose(1, 2) / (q.shape[-1] ** 0.5), dim=-1)
        t = self.norm1(t + torch.sigmoid(self.gate(t)) * self.dropout(attn @ v))
        t = self.norm2(t + self.ffn(t))
        return t.reshape(B, N, C)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels}, groups={self.groups})"


def _lattice(h: int, w: int, device) -> torch.Tensor:
    """(N, N) bool adjacency of the 4-connected pixel grid."""
    r = torch.arange(h * w, device=device)
    rows, cols = r // w, r % w
    dr = (rows[:, None] - rows[None]).abs()
    dc = (cols[:, None] - cols[None]).abs()
    return (dr + dc) == 1


@torch.no_grad()
def mutual_information_graph(
    nodes: torch.Tensor, grid: tuple[int, int], k: int = 8, lattice: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-node graph from mutual information between pixels' channel profiles.

    The RMCG paper builds the image topology "based on mutual information" without
    the estimator in our copy. We estimate the MI of two pixels i, j from their
    C-dim feature vectors under a joint-Gaussian assumption:
    ``MI_ij = -1/2 log(1 - rho_ij^2)``, with ``rho_ij`` the Pearson correlation of
    the two vectors (cheap: one batched matrix product). Each node is joined to
    its ``k`` highest-MI nodes; with ``lattice`` also to its 4 grid neighbours
    (the image's own topology). Edges are made symmetric; the edge weight is MI
    divided by the graph's largest edge MI (in [0, 1]). The topology is not
    learned (no gradient flows through it).

    Args:
        nodes: (B, N, C) node features, N = h * w in row-major order.
        grid: (h, w) of the feature map.
        k: neighbours by MI per node.
        lattice: add 4-connected grid edges.

    Returns:
        ``edge_index`` (2, E) int64 over the B * N nodes of the batch (graph b
        has nodes b*N .. b*N+N-1, source row first) and ``edge_weight`` (E,) float.
    """
    B, N, _ = nodes.shape
    z = nodes.float() - nodes.float().mean(-1, keepdim=True)
    z = F.normalize(z, dim=-1)
    rho2 = (z @ z.transpose(1, 2)).square().clamp(max=1 - 1e-6)
    mi = -0.5 * torch.log1p(-rho2)
    eye = torch.eye(N, dtype=torch.bool, device=nodes.device)
    adj = torch.zeros(B, N, N, dtype=torch.bool, device=nodes.device)
    k_eff = min(k, N - 1)
    if k_eff > 0:
        idx = mi.masked_fill(eye, float("-inf")).topk(k_eff, dim=-1).indices
        adj.scatter_(2, idx, True)
    if lattice:
        adj |= _lattice(*grid, nodes.device)
    adj = (adj | adj.transpose(1, 2)) & ~eye
    b, i, j = adj.nonzero(as_tuple=True)
    weight = mi[b, i, j]
    gmax = torch.zeros(B, device=nodes.device).scatter_reduce(0, b, weight, "amax")
    weight = weight / gmax[b].clamp_min(1e-12)
    return torch.stack([b * N + j, b * N + i]), weight


class RMCG(nn.Module):
    """ResNet18 -> multi-channel attention -> MI pixel graph -> stacked GAT -> attention pooling.

    Graph convolution with attention is PyTorch Geometric's ``GATConv``
    (Velickovic et al., ICLR 2018) with the MI edge weight as edge feature and
    a linear skip connection per layer (against over-smoothing, which the paper
    discusses). Graph pooling is attention pooling (Ilse et al. 2018; the
    ``gate_nn`` of PyG's ``AttentionalAggregation``), computed densely because every image's
    graph has the same h * w nodes, so its per-node weights can be kept as
    the explanation.

    Args:
        num_classes: number of output classes.
        arch: torchvision ResNet of the trunk (``"resnet18"`` in the paper).
        groups: channel groups of :class:`MultiChannelAttention`.
        hidden: node feature width after the graph layers.
        heads: GAT attention heads (concatenated; must divide ``hidden``).
        num_layers: stacked graph-attention layers.
        k: MI neighbours per node.
        dropout: dropout in attention and between graph layers.
        l2_lambda: lambda of Eq. 7 (L2 on the classifier weights).

    Shapes:
        - input: (B, 3, H, W), normalised RGB (224 x 224: a 7 x 7 map, 49 pixel nodes)
        - ``forward_features``: the trunk's map (B, C, h, w), h = H/32, w = W/32, C = 512
          for ResNet18; its h * w pixels are the graph's nodes
        - output: logits (B, num_classes); ``last_node_attention`` (B, h, w), summing to 1
          per image
    """

    def __init__(
        self,
        num_classes: int = 2,
        arch: str = "resnet18",
        groups: int = 8,
        hidden: int = 128,
        heads: int = 4,
        num_layers: int = 2,
        k: int = 8,
        dropout: float = 0.1,
        l2_lambda: float = 1e-3,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GATConv  # late: PyG takes seconds to import

        self.backbone = ResNetTrunk(arch)
        c = self.backbone.num_features
        self.k, self.l2_lambda = k, l2_lambda
        self.channel_attention = MultiChannelAttention(c, groups, dropout)
        self.convs = nn.ModuleList()
        self.skips = nn.ModuleList()
        for i in range(num_layers):
            cin = c if i == 0 else hidden
            self.convs.append(
                GATConv(cin, hidden // heads, heads=heads, edge_dim=1, dropout=dropout)
            )
            self.skips.append(nn.Linear(cin, hidden, bias=False))
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 1)
        )
        self.classifier = nn.Linear(hidden, num_classes)
        self.last_node_attention: torch.Tensor | None = None

    @property
    def head(self) -> nn.Module:
        parts = [self.channel_attention, self.convs, self.skips, self.gate, self.classifier]
        return nn.ModuleList(parts)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """ResNet18 feature map (B, 512, h, w); its pixels become graph nodes."""
        return self.backbone(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        B, C, h, w = feats.shape
        nodes = self.channel_attention(feats.flatten(2).transpose(1, 2))  # (B, N, C)
        edge_index, edge_weight = mutual_information_graph(nodes.detach(), (h, w), self.k)
        z = nodes.reshape(B * h * w, C)
        for conv, skip in zip(self.convs, self.skips):
            z = self.dropout(F.elu(conv(z, edge_index, edge_weight[:, None].to(z.dtype)) + skip(z)))
        z = z.view(B, h * w, -1)
        attn = torch.softmax(self.gate(z).squeeze(-1), dim=1)  # (B, N), sums to 1 per image
        self.last_node_attention = attn.detach().view(B, h, w)
        pooled = (attn.unsqueeze(-1) * z).sum(1)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes); sets ``last_node_attention`` (B, h, w)."""
        return self.forward_head(self.forward_features(x))

    def regularization_loss(self) -> torch.Tensor:
        """``lambda / 2 * ||w||^2`` on the last (prediction) layer's weights (RMCG paper, Eq. 7)."""
        return 0.5 * self.l2_lambda * self.classifier.weight.square().sum()


@register_model(
    ModelConfig(
        name="rmcg",
        kind="image",
        input_size=(224, 224),
        target_layer="backbone.layer4",
        classifier="classifier",
        paper=RMCG_PAPER,
        explanation="node_attention",
    )
)
def rmcg(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """RMCG: ResNet18 + multi-channel attention + MI pixel graph + GAT + pooling.

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 weights file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: further arguments of :class:`RMCG`.

    Returns:
        :class:`RMCG`.
    """
    model = RMCG(num_classes, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch=model.backbone.arch)
    return model


@register_model(
    ModelConfig(
        name="test_rmcg",
        kind="image",
        input_size=(96, 96),
        target_layer="backbone.layer4",
        classifier="classifier",
        paper="test variant of rmcg (96 x 96 input, narrow graph layers)",
        explanation="node_attention",
        test_only=True,
    )
)
def test_rmcg(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """RMCG with 16-wide graph layers and k=3, for tests (3 x 3 pixel nodes at 96 x 96).

    Args:
        num_classes: number of output classes.
        pretrained: as :func:`rmcg`.

    Returns:
        :class:`RMCG`.
    """
    params = {"groups": 4, "hidden": 16, "heads": 2, "k": 3, **kw}
    return rmcg(num_classes, pretrained=pretrained, **params)
