"""ResNets with attention: DALAResNet50 (Liu et al., 2023) and CSPResNet50 + FPN + SE.

The papers: Liu et al., arXiv:2308.13150 (DALAResNet50, DT Grad-CAM) and the
CSPResNet50-FPN-SE paper (ICCK Journal of Image Analysis and Processing); full
citations in ``docs/citations.md``.

Both keep an ImageNet-compatible backbone (``model.backbone``, loaded by
:func:`histoview.models.pretrained.load_pretrained_backbone`) and put the paper's new
parts in front of the classifier. Grad-CAM hooks the last spatial map before
global pooling (``ModelConfig.target_layer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histoview.models.cnn import ResNetTrunk
from histoview.models.pretrained import load_pretrained_backbone
from histoview.models.registry import ModelConfig, register_model

CSP_FPN_SE_PAPER = (
    "CSPResNet50-FPN-SE paper (ICCK Journal of Image Analysis and Processing): CSPNet-based "
    "BreaKHis classification with FPN-style aggregation, SE attention and Grad-CAM, Sec. 3 "
    "(architecture) and Sec. 5"
)
LIU2023 = (
    "Liu et al., Breast cancer classification with enhanced interpretability: DALAResNet50 and "
    "DT Grad-CAM, arXiv:2308.13150 (2023), Method: lightweight attention, classifier"
)


# --------------------------------------------------------------------------- DALAResNet50


class LightweightAttention(nn.Module):
    """Lightweight channel attention of DALAResNet50 (Liu et al., 2023, Method).

    The paper lists its steps: channel-wise average pooling, a linear
    transformation, element-wise multiplication, feature fusion, dropout. We
    read them as ``a = sigmoid(W avgpool(x) + b)`` (one linear map C -> C,
    sigmoid to keep weights in (0, 1)), ``x_att = x * a`` (broadcast over
    pixels), fusion by a residual sum ``x + x_att``, then dropout.

    Args:
        channels: C, channels of the attended map.
        drop_rate: dropout after fusion.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, drop_rate: float = 0.25) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(drop_rate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Start as a near-identity gate (a = 0.5 everywhere) so ImageNet features pass through.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.linear(x.mean(dim=(2, 3))))
        return self.dropout(x + x * a[:, :, None, None])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels}, drop={self.dropout.p})"


class DALAResNet(nn.Module):
    """Dual-Activated Lightweight Attention ResNet (Liu et al., 2023).

    ResNet trunk -> :class:`LightweightAttention` at the end of the fourth stage ->
    global average pooling -> FC + LeakyReLU -> dropout -> FC + ReLU -> linear
    classifier. The paper names two fully connected layers with LeakyReLU and ReLU
    and dropout 0.25 but not their widths: we use 512 and 256.

    Args:
        arch: torchvision ResNet of the trunk (``"resnet50"``; ``"resnet18"`` for tests).
        num_classes: number of output classes.
        hidden: widths of the two fully connected layers.
        drop_rate: dropout rate (0.25 in the paper), in the attention module and the neck.

    Shapes:
        - input: (B, 3, H, W), normalised RGB (224 x 224 in the paper)
        - ``forward_features``: the attended stage-4 map (B, C, H/32, W/32), C = 2048 for
          ResNet50 (the Grad-CAM target)
        - output: logits (B, num_classes)
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 2,
        hidden: Sequence[int] = (512, 256),
        drop_rate: float = 0.25,
    ) -> None:
        super().__init__()
        self.backbone = ResNetTrunk(arch)
        c = self.backbone.num_features
        self.attention = LightweightAttention(c, drop_rate)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = nn.Sequential(
            nn.Linear(c, hidden[0]),
            nn.LeakyReLU(0.01),
            nn.Dropout(drop_rate),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden[1], num_classes)

    @property
    def head(self) -> nn.Module:
        return nn.ModuleList([self.attention, self.neck, self.classifier])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.backbone(x))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.neck(self.pool(feats).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    ModelConfig(
        name="dalaresnet50",
        kind="image",
        input_size=(224, 224),
        target_layer="attention",
        classifier="classifier",
        paper=LIU2023,
    )
)
def dalaresnet50(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """DALAResNet50 (Liu et al., 2023): ResNet50 + lightweight attention in stage 4 + two FC layers.

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet50 weights file, or True (local cache only);
            see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: ``hidden``, ``drop_rate`` of :class:`DALAResNet`.

    Returns:
        :class:`DALAResNet`.
    """
    model = DALAResNet("resnet50", num_classes, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="resnet50")
    return model


@register_model(
    ModelConfig(
        name="test_dalaresnet",
        kind="image",
        input_size=(64, 64),
        target_layer="attention",
        classifier="classifier",
        paper="test variant of dalaresnet50 (ResNet18 trunk, 64 x 64 input)",
        test_only=True,
    )
)
def test_dalaresnet(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """DALAResNet with a ResNet18 trunk and small neck, for tests.

    Args:
        num_classes: number of output classes.
        pretrained: False, an ImageNet ResNet18 file, or True.

    Returns:
        :class:`DALAResNet`.
    """
    model = DALAResNet("resnet18", num_classes, hidden=kw.pop("hidden", (32, 16)), **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="resnet18")
    return model


# --------------------------------------------------------------------------- CSPResNet50-FPN-SE


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., CVPR 2018).

    ``x * sigmoid(W2 relu(W1 avgpool(x)))`` with reduction ``r``.

    Args:
        channels: C.
        reduction: r, the bottleneck is C / r wide.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class CSPFPNSE(nn.Module):
    """CSPResNet50 + FPN-style aggregation + SE + dual pooling + dense neck.

    The CSPResNet50-FPN-SE paper's architecture (Abstract, Sec. 5): an ImageNet
    CSPResNet50 backbone; feature-pyramid aggregation over three scales (strides 8, 16, 32: 1 x 1
    lateral convolutions to ``fpn_channels``, top-down nearest upsampling and
    sum, 3 x 3 smoothing); squeeze-and-excitation on each scale; global average
    AND global max pooling per scale, concatenated to a 3 x 2 x 256 = 1536-d
    descriptor; and a "four-stage dense classification neck" (we use three
    Linear-ReLU-Dropout stages 1536 -> 1024 -> 512 -> 256 and the output layer
    as fourth; widths are not given; no batch norm, so batches of one train).

    Args:
        arch: timm CSP backbone (``"cspresnet50"``; a smaller one for tests).
        num_classes: number of output classes.
        fpn_channels: channels per pyramid level (256 gives the 1536-d descriptor).
        neck: widths of the hidden dense stages.
        drop_rate: dropout in the neck.

    Shapes:
        - input: (B, 3, H, W), normalised RGB (224 x 224 in the paper)
        - ``forward_features``: three pyramid levels after SE, (B, fpn_channels, H/s, W/s)
          for s = 8, 16, 32
        - ``forward_head(..., pre_logits=True)``: the descriptor (B, 6 * fpn_channels)
        - output: logits (B, num_classes)
    """

    out_stages = (1, 2, 3)  # timm stage indices of strides 8, 16, 32 (features_only 2, 3, 4)

    def __init__(
        self,
        arch: str = "cspresnet50",
        num_classes: int = 2,
        fpn_channels: int = 256,
        neck: Sequence[int] = (1024, 512, 256),
        drop_rate: float = 0.3,
    ) -> None:
        super().__init__()
        import timm

        # pretrained=False: timm never downloads here; ImageNet weights come from a file.
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        chans = [self.backbone.feature_info[i + 1]["num_chs"] for i in self.out_stages]
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in chans)
        self.smooth = nn.ModuleList(
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in chans
        )
        self.se = nn.ModuleList(SqueezeExcite(fpn_channels) for _ in chans)
        self.descriptor_dim = len(chans) * fpn_channels * 2
        layers: list[nn.Module] = []
        width = self.descriptor_dim
        for w in neck:
            layers += [nn.Linear(width, w), nn.ReLU(), nn.Dropout(drop_rate)]
            width = w
        self.neck = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    @property
    def head(self) -> nn.Module:
        return nn.ModuleList([self.lateral, self.smooth, self.se, self.neck, self.classifier])

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid levels after SE, finest first: (B, F, H/s, W/s) for s = 8, 16, 32."""
        x = self.backbone.stem(x)
        feats = []
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if i in self.out_stages:
                feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down pathway
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [se(smooth(p)) for se, smooth, p in zip(self.se, self.smooth, lat)]

    def descriptor(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Global average and max pooling per level, concatenated: (B, 1536)."""
        pooled = [torch.cat([p.mean(dim=(2, 3)), p.amax(dim=(2, 3))], dim=1) for p in feats]
        out = torch.cat(pooled, dim=1)
        assert out.shape[1] == self.descriptor_dim, (out.shape, self.descriptor_dim)
        return out

    def forward_head(self, feats: Sequence[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        d = self.descriptor(feats)
        return d if pre_logits else self.classifier(self.neck(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    ModelConfig(
        name="cspresnet50_fpn_se",
        kind="image",
        input_size=(224, 224),
        target_layer="backbone.stages.3",
        classifier="classifier",
        paper=CSP_FPN_SE_PAPER,
    )
)
def cspresnet50_fpn_se(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """CSPResNet50 + FPN + SE with a 1536-d descriptor (CSPResNet50-FPN-SE paper, Sec. 3).

    Grad-CAM hooks the last backbone stage (stride 32), which feeds all three
    pyramid levels through the top-down pathway.

    Args:
        num_classes: number of output classes.
        pretrained: False, a timm ``cspresnet50`` ImageNet file, or True (local
            cache only); see :func:`~histoview.models.pretrained.load_pretrained_backbone`.
        **kw: ``fpn_channels``, ``neck``, ``drop_rate`` of :class:`CSPFPNSE`.

    Returns:
        :class:`CSPFPNSE`; ``forward_head(feats, pre_logits=True)`` is the descriptor.
    """
    model = CSPFPNSE("cspresnet50", num_classes, **kw)
    if kw.get("fpn_channels", 256) == 256:
        assert model.descriptor_dim == 1536
    load_pretrained_backbone(model.backbone, pretrained, arch="cspresnet50")
    return model


@register_model(
    ModelConfig(
        name="test_csp_fpn_se",
        kind="image",
        input_size=(64, 64),
        target_layer="backbone.stages.3",
        classifier="classifier",
        paper="test variant of cspresnet50_fpn_se (timm cs3darknet_s, 32-channel pyramid)",
        test_only=True,
    )
)
def test_csp_fpn_se(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """CSP-FPN-SE on timm's small ``cs3darknet_s`` with a 32-channel pyramid, for tests.

    Args:
        num_classes: number of output classes.
        pretrained: False, a ``cs3darknet_s`` weights file, or True.

    Returns:
        :class:`CSPFPNSE` (descriptor 3 x 32 x 2 = 192-d).
    """
    kw.setdefault("fpn_channels", 32)
    kw.setdefault("neck", (64, 32, 16))
    model = CSPFPNSE("cs3darknet_s", num_classes, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="cs3darknet_s")
    return model
