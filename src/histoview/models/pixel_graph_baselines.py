"""The RMCG paper's Table 1 baselines: AlexNet and the pixel-graph GNNs (GCN, ECC, GAT, GCNII).

The RMCG paper (:mod:`histoview.models.rmcg`, ``docs/citations.md``), Table 1, compares RMCG
with two CNNs (ResNet18, in
:mod:`histoview.models.cnn`, and AlexNet) and four graph networks that
"rely on pixel points to model the topology of the image itself":
ResNet18-GCN, ECC, ResNet18-GAT and GCNII. The paper gives no details of the
baselines, so the GNNs here are RMCG without its additions, differing only in
the graph convolution:

    ResNet18 trunk -> feature-map pixels as nodes -> the same mutual-information
    pixel graph as RMCG (:func:`~histoview.models.rmcg.mutual_information_graph`)
    -> two graph convolutions -> global mean pooling -> linear classifier.

No multi-channel attention and no attention pooling (those are RMCG's). The
graph layers are PyTorch Geometric's:

* ``resnet18-gcn``: ``GCNConv`` (Kipf and Welling, ICLR 2017), the MI edge
  weight as edge weight in the normalised adjacency.
* ``ecc``: edge-conditioned convolution, ``NNConv`` (Simonovsky and
  Komodakis, CVPR 2017): an edge network maps each edge's attributes (MI
  weight and the source pixel's row/column offset) to the layer's weight matrix.
* ``resnet18-gat``: ``GATConv`` (Velickovic et al., ICLR 2018), MI weight as edge feature.
* ``gcnii``: ``GCN2Conv`` (Chen et al., ICML 2020), GCN with initial residual
  and identity mapping. Table 1 calls it "AlexNet-GCNII", the text
  "Resnet-GCNII"; we use the ResNet18 trunk like the other GNN rows.

Grad-CAM hooks ``backbone.layer4`` (the trunk's last stage); the gradient
reaches it through the node features (the graph itself is built without gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histoview.models.cnn import PlainClassifier, ResNetTrunk
from histoview.models.pretrained import load_pretrained_backbone
from histoview.models.registry import ModelConfig, register_model
from histoview.models.rmcg import mutual_information_graph

RMCG_TABLE_1 = "baseline of RMCG (RMCG paper, Table 1)"

GRAPH_CONVS = ("gcn", "ecc", "gat", "gcnii")


# --------------------------------------------------------------------------- AlexNet


# --------------------------------------------------------------------------- pixel-graph GNNs


def _edge_offsets(edge_index: torch.Tensor, n: int, grid: tuple[int, int]) -> torch.Tensor:
    """(E, 2) row/column offset of each edge's source pixel from its target, over (h, w)."""
    h, w = grid
    local = edge_index % n
    rows, cols = local // w, local % w
    return torch.stack([(rows[0] - rows[1]) / h, (cols[0] - cols[1]) / w], dim=1)


class PixelGraphNet(nn.Module):
    """ResNet trunk -> MI pixel graph -> two PyG graph convolutions -> mean pool -> linear.

    Per layer ``z <- dropout(ReLU(conv(z, graph)))``. ECC and GCNII first
    project the C trunk channels to ``hidden`` (ReLU of a linear layer): ECC
    because its edge network emits an in x out matrix per edge (512 x hidden
    would not fit in memory), GCNII because its initial residual adds
    ``x0`` at the layer width, as in the GCNII paper.

    Args:
        num_classes: number of output classes.
        conv: ``"gcn"``, ``"ecc"``, ``"gat"`` or ``"gcnii"``.
        arch: torchvision ResNet of the trunk.
        hidden: node width after the graph layers.
        num_layers: graph convolutions (two in every baseline).
        k: MI neighbours per node (as RMCG).
        dropout: dropout between graph layers.
        heads: GAT heads (concatenated; must divide ``hidden``).
        edge_hidden: hidden width of ECC's edge network.
        alpha, theta: GCNII's initial-residual strength and identity-mapping decay.

    Shapes:
        (B, 3, H, W) -> (B, num_classes); nodes are the (H/32) * (W/32) trunk pixels.
    """

    def __init__(
        self,
        num_classes: int = 2,
        conv: str = "gcn",
        arch: str = "resnet18",
        hidden: int = 128,
        num_layers: int = 2,
        k: int = 8,
        dropout: float = 0.1,
        heads: int = 4,
        edge_hidden: int = 16,
        alpha: float = 0.1,
        theta: float = 0.5,
    ) -> None:
        super().__init__()
        # late: PyG takes seconds to import
        from torch_geometric.nn import GATConv, GCN2Conv, GCNConv, NNConv

        if conv not in GRAPH_CONVS:
            raise ValueError(f"conv must be one of {GRAPH_CONVS}, got {conv!r}")
        self.conv, self.k = conv, k
        self.backbone = ResNetTrunk(arch)
        c = self.backbone.num_features
        projected = conv in ("ecc", "gcnii")
        self.input_proj = nn.Linear(c, hidden) if projected else nn.Identity()
        self.convs = nn.ModuleList()
        for i in range(num_layers):
            cin = hidden if projected or i > 0 else c
            if conv == "gcn":
                layer = GCNConv(cin, hidden)
            elif conv == "gat":
                layer = GATConv(cin, hidden // heads, heads=heads, edge_dim=1, dropout=dropout)
            elif conv == "ecc":
                edge_net = nn.Sequential(
                    nn.Linear(3, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, cin * hidden)
                )
                layer = NNConv(cin, hidden, edge_net, aggr="mean")
            else:
                layer = GCN2Conv(hidden, alpha=alpha, theta=theta, layer=i + 1)
            self.convs.append(layer)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def head(self) -> nn.Module:
        return nn.ModuleList([self.input_proj, self.convs, self.classifier])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk feature map (B, C, h, w); its pixels become graph nodes."""
        return self.backbone(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        B, C, h, w = feats.shape
        n = h * w
        nodes = feats.flatten(2).transpose(1, 2)  # (B, N, C), row-major pixels
        edge_index, edge_weight = mutual_information_graph(nodes.detach(), (h, w), self.k)
        edge_weight = edge_weight.to(feats.dtype)
        z = nodes.reshape(B * n, C)
        if self.conv in ("ecc", "gcnii"):
            z = F.relu(self.input_proj(z))
        z0 = z
        if self.conv == "ecc":
            offsets = _edge_offsets(edge_index, n, (h, w)).to(feats.dtype)
            edge_attr = torch.cat([edge_weight[:, None], offsets], dim=1)
        for conv in self.convs:
            if self.conv == "gcn":
                z = conv(z, edge_index, edge_weight)
            elif self.conv == "gat":
                z = conv(z, edge_index, edge_weight[:, None])
            elif self.conv == "ecc":
                z = conv(z, edge_index, edge_attr)
            else:
                z = conv(z, z0, edge_index, edge_weight)
            z = self.dropout(F.relu(z))
        batch = torch.arange(B, device=feats.device).repeat_interleave(n)
        pooled = global_mean_pool(z, batch, size=B)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"conv={self.conv!r}, k={self.k}"


# --------------------------------------------------------------------------- registry

_IMAGE = dict(kind="image", input_size=(224, 224))
_GNN = dict(target_layer="backbone.layer4", classifier="classifier", **_IMAGE)


@register_model(
    ModelConfig(
        name="alexnet",
        target_layer="backbone.features.11",
        classifier="head",
        paper="Krizhevsky et al., ImageNet classification with deep CNNs, NeurIPS 2012; "
        f"AlexNet {RMCG_TABLE_1}",
        **_IMAGE,
    )
)
def alexnet(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """torchvision AlexNet with a new ``num_classes`` final layer (RMCG paper, Table 1).

    Grad-CAM hooks the rectified output of the last convolution
    (``features.11``), before the last max-pool.

    Args:
        num_classes: number of output classes.
        pretrained: False (random), a weights file, or True (torchvision's
            local cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.

    Returns:
        :class:`~histoview.models.cnn.PlainClassifier`.
    """
    model = PlainClassifier(num_classes, arch="alexnet", **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="alexnet")
    return model


def _pixel_graph(conv: str, num_classes: int, pretrained, kw) -> PixelGraphNet:
    model = PixelGraphNet(num_classes, conv=conv, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch=model.backbone.arch)
    return model


@register_model(
    ModelConfig(
        name="resnet18-gcn",
        paper=f"Kipf and Welling, GCN, ICLR 2017; ResNet18-GCN {RMCG_TABLE_1}",
        **_GNN,
    )
)
def resnet18_gcn(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """ResNet18 + MI pixel graph + two GCNConv layers (RMCG paper, Table 1).

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 weights file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: further arguments of :class:`PixelGraphNet`.

    Returns:
        :class:`PixelGraphNet`.
    """
    return _pixel_graph("gcn", num_classes, pretrained, kw)


@register_model(
    ModelConfig(
        name="ecc",
        paper="Simonovsky and Komodakis, edge-conditioned convolution, CVPR 2017; "
        f"ECC {RMCG_TABLE_1}",
        **_GNN,
    )
)
def ecc(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """ResNet18 + MI pixel graph + two NNConv (ECC) layers, width 64 (RMCG paper, Table 1).

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 weights file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: further arguments of :class:`PixelGraphNet`.

    Returns:
        :class:`PixelGraphNet`.
    """
    return _pixel_graph("ecc", num_classes, pretrained, {"hidden": 64, **kw})


@register_model(
    ModelConfig(
        name="resnet18-gat",
        paper=f"Velickovic et al., GAT, ICLR 2018; ResNet18-GAT {RMCG_TABLE_1}",
        **_GNN,
    )
)
def resnet18_gat(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """ResNet18 + MI pixel graph + two GATConv layers (RMCG paper, Table 1).

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 weights file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: further arguments of :class:`PixelGraphNet`.

    Returns:
        :class:`PixelGraphNet`.
    """
    return _pixel_graph("gat", num_classes, pretrained, kw)


@register_model(
    ModelConfig(
        name="gcnii",
        paper="Chen et al., GCNII, ICML 2020; GCNII (Table 1: 'AlexNet-GCNII', text: "
        f"'Resnet-GCNII'; ResNet18 trunk here) {RMCG_TABLE_1}",
        **_GNN,
    )
)
def gcnii(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """ResNet18 + MI pixel graph + two GCN2Conv layers (RMCG paper, Table 1).

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 weights file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: further arguments of :class:`PixelGraphNet`.

    Returns:
        :class:`PixelGraphNet`.
    """
    return _pixel_graph("gcnii", num_classes, pretrained, kw)
