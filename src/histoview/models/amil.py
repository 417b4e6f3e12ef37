"""Attention-based multiple-instance learning (A-MIL) of Patil et al., 2019, after Ilse et al. 2018.

Patil et al., "Breast cancer histopathology image classification and localization using
multiple instance learning", WIECON-ECE 2019 (``docs/citations.md``); section, table and
equation numbers below are theirs unless Ilse et al. is named.

An image is a bag of patches (:mod:`histoview.preprocessing.patches`). Each
patch goes through the feature extractor of Table II::

    [3 x 28 x 28] conv 5x5 (20) -> ReLU -> max-pool 2 -> [20 x 12 x 12]
    conv 5x5 (50) -> ReLU -> max-pool 2 -> [50 x 4 x 4] -> flatten 800
    -> FC 500 -> ReLU                                   (500 features h_p)

Attention pooling (equations 2 and 3)::

    a_p = exp(w^T tanh(V h_p)) / sum_j exp(w^T tanh(V h_j)),   z = sum_p a_p h_p

and a linear bag classifier on ``z``. The gated variant (Ilse et al. 2018,
section 2.4) multiplies ``tanh(V h)`` by ``sigmoid(U h)``.

Choices where the paper is silent, documented here:

* hidden size of the attention network ``l`` (V is l x 500): 128, as in Ilse et al.;
* the classifier outputs one logit per class and is trained with softmax
  cross-entropy; for two classes this equals the paper's binary cross-entropy
  on the logit difference, and it extends to the 4-class BACH task;
* larger patches (e.g. BACH's 124 x 124) go through the same convolutions
  followed by an adaptive average pool to 4 x 4; for 28 x 28 patches the pool
  is the identity, so the paper's path is unchanged.

Bags are (N, 3, h, w) for one bag or (B, N, 3, h, w) for B bags of equal
size. After each forward the attention weights are in ``last_attention``
((B, N), each row sums to 1): they are A-MIL's explanation.
"""

from __future__ import annotations

import torch
from torch import nn

from histoview.models.registry import ModelConfig, register_model

#: A-MIL works on patches scaled to [0, 1] and centred per channel; we use 0.5/0.5.
_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)


class AttentionPool(nn.Module):
    """Attention pooling of Patil et al., 2019, equation 3 (optionally gated, Ilse et al. 2018).

    Args:
        in_features: size of each instance feature h_p (500 in the paper).
        hidden: size l of the attention network.
        gated: use the gated attention mechanism.

    Shapes:
        input (B, N, in_features) -> pooled (B, in_features), attention (B, N).
    """

    def __init__(self, in_features: int = 500, hidden: int = 128, gated: bool = False):
        super().__init__()
        self.in_features, self.hidden, self.gated = in_features, hidden, gated
        self.V = nn.Linear(in_features, hidden)
        self.U = nn.Linear(in_features, hidden) if gated else None
        self.w = nn.Linear(hidden, 1)

    def reset_parameters(self) -> None:
        for layer in (self.V, self.U, self.w):
            if layer is not None:
                layer.reset_parameters()

    def forward(
        self, h: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.tanh(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        scores = self.w(a).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=-1)
        return torch.bmm(attention.unsqueeze(1), h).squeeze(1), attention

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_features}, hidden={self.hidden}, gated={self.gated})"
        )


class AMIL(nn.Module):
    """Attention-MIL bag classifier (Patil et al., 2019, section III-D, Table II).

    Args:
        num_classes: bag classes.
        patch_size: patch edge in pixels (28 in the paper for BreakHis, 124 for BACH).
        gated: gated attention instead of equation 3's plain tanh attention.
        attention_hidden: size of the attention network's hidden layer.
        dropout: dropout on the bag feature before the classifier (0 in the paper).

    Shapes:
        - input: one bag (N, 3, p, p) or B bags of equal size (B, N, 3, p, p), p the patch
          size, pixels scaled to [0, 1] then normalised with mean and std 0.5
        - output: logits (B, num_classes); ``last_attention`` (B, N), each row sums to 1
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        patch_size: int = 28,
        gated: bool = False,
        attention_hidden: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.backbone = nn.Sequential(  # Table II
            nn.Conv2d(3, 20, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((4, 4)),  # identity for 28 x 28 patches
            nn.Flatten(),
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(inplace=True),
        )
        self.pool = AttentionPool(500, attention_hidden, gated=gated)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(500, num_classes))
        self.last_attention: torch.Tensor | None = None

    def forward_features(self, bags: torch.Tensor) -> torch.Tensor:
        """Instance features h_p: (B, N, 500)."""
        if bags.ndim == 4:
            bags = bags.unsqueeze(0)
        b, n = bags.shape[:2]
        return self.backbone(bags.flatten(0, 1)).view(b, n, -1)

    def forward_head(
        self, h: torch.Tensor, pre_logits: bool = False, mask: torch.Tensor | None = None
    ):
        z, attention = self.pool(h, mask)
        self.last_attention = attention.detach()
        return z if pre_logits else self.head(z)

    def forward(self, bags: torch.Tensor, return_attention: bool = False):
        logits = self.forward_head(self.forward_features(bags))
        return (logits, self.last_attention) if return_attention else logits


@register_model(
    ModelConfig(
        name="amil",
        kind="bag",
        input_size=(28, 28),
        mean=_MEAN,
        std=_STD,
        classifier="head",
        paper="Patil et al. 2019 (A-MIL on BreakHis/BACH), section III-B/D, Table II, eq. 2-3; "
        "attention of Ilse et al. 2018",
        defaults={"patch_size": 28, "gated": False},
        explanation="attention",
    )
)
def amil(num_classes: int = 2, **kwargs) -> AMIL:
    """A-MIL of Patil et al., 2019 with equation 3's attention."""
    return AMIL(num_classes, **kwargs)


@register_model(
    ModelConfig(
        name="amil-gated",
        kind="bag",
        input_size=(28, 28),
        mean=_MEAN,
        std=_STD,
        classifier="head",
        paper="A-MIL of Patil et al. 2019 with the gated attention of Ilse et al. 2018, section 2.4",
        defaults={"patch_size": 28, "gated": True},
        explanation="attention",
    )
)
def amil_gated(num_classes: int = 2, **kwargs) -> AMIL:
    """A-MIL with gated attention."""
    return AMIL(num_classes, **kwargs)
