"""Whole-image CNN classifiers: ResNet18/50, VGG16 and customNet.

Every model here follows the timm model API: ``forward_features(x)`` returns
the last convolutional feature map (the one Grad-CAM explains),
``forward_head(feats, pre_logits=False)`` pools and classifies it. The
attribute ``backbone`` is the part that can carry ImageNet weights (frozen in
phase 1 of two-phase fine-tuning) and ``head`` the new classification part.

Backbones keep torchvision's/timm's own parameter names, so an ImageNet file
loads into ``model.backbone`` unchanged; :mod:`histoview.models.pretrained` finds and
checks those weights (offline only, never unpickled: :func:`load_pretrained_backbone`).

The attention-based ResNets (DALAResNet50, CSPResNet50-FPN-SE) live in
:mod:`histoview.models.attention_cnns`, RMCG in :mod:`histoview.models.rmcg`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from histoview.models.pretrained import load_pretrained_backbone
from histoview.models.registry import ModelConfig, register_model

PATIL2019 = (
    "Patil et al., Breast cancer histopathology image classification and localization using "
    "multiple instance learning, WIECON-ECE 2019, Sec. IV and Table III"
)


def _no_pretrained(name: str, pretrained) -> None:
    if pretrained not in (False, None):
        raise ValueError(f"{name} has no ImageNet weights; build it with pretrained=False")


# --------------------------------------------------------------------------- backbones


class ResNetTrunk(nn.Module):
    """torchvision ResNet without pooling and fc, keeping torchvision's parameter names.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"`` (any torchvision ResNet).

    Shapes:
        input (B, 3, H, W) -> output (B, ``num_features``, H/32, W/32).
    """

    def __init__(self, arch: str = "resnet50") -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.num_features = net.fc.in_features
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNetClassifier(nn.Module):
    """A torchvision ResNet whose final layer is replaced by a ``num_classes`` linear head.

    Args:
        arch: torchvision ResNet name (``"resnet18"``, ``"resnet50"``).
        num_classes: number of output classes.

    Shapes:
        - input: (B, 3, H, W), normalised RGB
        - ``forward_features``: the last stage's map (B, C, H/32, W/32), C = 512 (ResNet18)
          or 2048 (ResNet50)
        - output: logits (B, num_classes)
    """

    def __init__(self, arch: str, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = ResNetTrunk(arch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(feats).flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PlainTrunk(nn.Module):
    """A torchvision VGG16 or AlexNet without its last linear layer (torchvision's names).

    Args:
        arch: ``"vgg16"`` or ``"alexnet"``.
    """

    def __init__(self, arch: str = "vgg16") -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.features = net.features
        self.avgpool = net.avgpool
        self.classifier = net.classifier[:6]  # keeps torchvision's classifier.* names
        self.num_features = 4096


class PlainClassifier(nn.Module):
    """VGG16 or AlexNet with the last linear layer (4096 -> 1000) replaced by 4096 -> classes.

    Args:
        num_classes: number of output classes.
        arch: ``"vgg16"`` or ``"alexnet"``.

    Shapes:
        - input: (B, 3, H, W), normalised RGB (224 x 224 as in ImageNet training)
        - ``forward_features``: the last convolutional block's map, (B, 512, H/32, W/32) for
          VGG16 and (B, 256, 6, 6) for AlexNet at 224 x 224
        - output: logits (B, num_classes)
    """

    def __init__(self, num_classes: int = 2, arch: str = "vgg16") -> None:
        super().__init__()
        self.backbone = PlainTrunk(arch)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.backbone.classifier(self.backbone.avgpool(feats).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_stack(widths: Sequence[int], pool_after: Sequence[bool]) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for i, (cout, pool) in enumerate(zip(widths, pool_after), start=1):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        if pool:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        cin = cout
    return nn.Sequential(layers)


class SmallConvNet(nn.Module):
    """Plain conv/ReLU/max-pool stack, flattened at 4 x 4, then two fully connected layers.

    Used for customNet (Patil et al., 2019, Table III) and the tiny ``test_cnn``.

    Args:
        widths: output channels of each 3x3 convolution ("same" padding).
        pool_after: whether a 2x2 max-pool follows each convolution.
        hidden: width of the first fully connected layer.
        num_classes: outputs of the second fully connected layer.

    Shapes:
        - input: (B, 3, H, W) (128 x 128 for customNet)
        - ``forward_features``: (B, widths[-1], H / 2^k, W / 2^k), k the number of pools
        - output: logits (B, num_classes)
    """

    def __init__(
        self,
        widths: Sequence[int],
        pool_after: Sequence[bool],
        hidden: int,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.features = _conv_stack(widths, pool_after)
        # Table III goes from Conv5's 8x8 map to a 4x4 flatten: a 2x2 max-pool at 128x128
        # input. Adaptive max-pooling is exactly that at 128x128 and accepts other sizes.
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc1(self.pool(feats))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- registry

_IMAGE = dict(kind="image", input_size=(224, 224))


@register_model(
    ModelConfig(
        name="resnet18",
        target_layer="backbone.layer4",
        classifier="head",
        paper="He et al., Deep residual learning, CVPR 2016; ResNet18 baseline of A-MIL "
        "(Patil et al., 2019, Sec. IV, Table IV) and of RMCG (Table 1)",
        **_IMAGE,
    )
)
def resnet18(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """torchvision ResNet18 with a new ``num_classes`` final layer.

    Patil et al., 2019 (Sec. IV) fine-tune ImageNet ResNet18 on 224 x 224 crops as a
    transfer-learning baseline; the RMCG paper uses it as baseline and as RMCG's backbone.

    Args:
        num_classes: number of output classes.
        pretrained: False (random), a weights file, or True (local cache only);
            see :func:`load_pretrained_backbone`.

    Returns:
        :class:`ResNetClassifier`.
    """
    model = ResNetClassifier("resnet18", num_classes, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="resnet18")
    return model


@register_model(
    ModelConfig(
        name="resnet50",
        target_layer="backbone.layer4",
        classifier="head",
        paper="He et al., Deep residual learning, CVPR 2016; baseline of DALAResNet50 "
        "(Liu et al., arXiv:2308.13150)",
        **_IMAGE,
    )
)
def resnet50(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """torchvision ResNet50 with a new ``num_classes`` final layer (DALAResNet50's baseline).

    Args:
        num_classes: number of output classes.
        pretrained: False, a weights file, or True; see :func:`load_pretrained_backbone`.

    Returns:
        :class:`ResNetClassifier`.
    """
    model = ResNetClassifier("resnet50", num_classes, **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="resnet50")
    return model


@register_model(
    ModelConfig(
        name="vgg16",
        target_layer="backbone.features.29",
        classifier="head",
        paper="Simonyan and Zisserman, ICLR 2015; VGG16 baseline and Grad-CAM model of A-MIL "
        "(Patil et al., 2019, Sec. IV, Fig. 3)",
        **_IMAGE,
    )
)
def vgg16(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """torchvision VGG16 with its last linear layer replaced (Patil et al., 2019, Sec. IV).

    Grad-CAM hooks the rectified output of the last convolution
    (``features.29``), before the last max-pool.

    Args:
        num_classes: number of output classes.
        pretrained: False, a weights file, or True; see :func:`load_pretrained_backbone`.

    Returns:
        :class:`PlainClassifier`.
    """
    model = PlainClassifier(num_classes, arch="vgg16", **kw)
    load_pretrained_backbone(model.backbone, pretrained, arch="vgg16")
    return model


@register_model(
    ModelConfig(
        name="customnet",
        kind="image",
        input_size=(128, 128),
        target_layer="features.relu5",
        classifier="head",
        paper=PATIL2019,
    )
)
def customnet(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """customNet, the small baseline CNN of Patil et al., 2019 (Sec. IV, Table III).

    As Table III gives it: input 3 x 128 x 128; Conv1 (64) - MaxPool - Conv2
    (64) - MaxPool - Conv3 (128) - MaxPool - Conv4 (128) - MaxPool - Conv5 -
    flatten 128 x 4 x 4 = 2048 - FC1 (2048 -> 1024) - FC2 (1024 -> classes).

    What the table leaves vague, and what we chose:

    * kernel sizes, padding, activations: 3 x 3, "same" padding (the table's
      sizes are kept by each convolution), ReLU; no batch norm or dropout
      (none is mentioned);
    * Conv5's output is printed as "[3 x 8 x 8]" - a typo: the flatten
      "[128 x 4 x 4] = 2048" needs 128 channels;
    * the table goes from Conv5's 8 x 8 map to a 4 x 4 flatten without naming a
      layer: a 2 x 2 max-pool (adaptive, so other input sizes work too);
    * "two fully connected layers": FC1 2048 -> 1024 with ReLU, FC2 is the output.

    Args:
        num_classes: number of output classes.
        pretrained: must be False (customNet is trained from scratch).

    Returns:
        :class:`SmallConvNet`.
    """
    _no_pretrained("customnet", pretrained)
    widths = kw.pop("widths", (64, 64, 128, 128, 128))
    return SmallConvNet(widths, (True, True, True, True, False), 1024, num_classes, **kw)


@register_model(
    ModelConfig(
        name="test_cnn",
        kind="image",
        input_size=(32, 32),
        target_layer="features.relu2",
        classifier="head",
        paper="tiny test variant",
        test_only=True,
    )
)
def test_cnn(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """A 2-convolution network for fast tests (conv8 - pool - conv16 - fc32 - fc).

    Args:
        num_classes: number of output classes.
        pretrained: must be False.

    Returns:
        :class:`SmallConvNet`.
    """
    _no_pretrained("test_cnn", pretrained)
    return SmallConvNet((8, 16), (True, False), 32, num_classes, **kw)


CRUZROA2014 = (
    "Cruz-Roa et al., Automatic detection of invasive ductal carcinoma in whole slide images "
    "with convolutional neural networks, SPIE Medical Imaging 2014 (a small ConvNet on 2.5X "
    "patches)"
)


@register_model(
    ModelConfig(
        name="patchcnn",
        kind="image",
        input_size=(48, 48),
        target_layer="features.relu4",
        classifier="head",
        paper=CRUZROA2014,
    )
)
def patchcnn(num_classes: int = 2, *, pretrained: str | bool = False, **kw) -> nn.Module:
    """A small patch classifier for low-magnification tissue patches (48 x 48 input).

    The customNet family (:class:`SmallConvNet`) narrowed for the 50 x 50 IDC patches of
    Cruz-Roa et al., 2014 (resized to 48 x 48, so every pooling halves evenly): Conv1 (32)
    - MaxPool - Conv2 (64) - MaxPool - Conv3 (128) - MaxPool - Conv4 (128), 3 x 3 "same"
    convolutions with ReLU, then a 4 x 4 adaptive max-pool, FC 2048 -> 128 -> classes
    (about 0.5 M parameters, 2 MB of weights). Grad-CAM hooks ``features.relu4``: a 6 x 6
    map, one cell per 8 input pixels. Cruz-Roa et al. used two convolution-pooling layers
    and one fully connected layer on 2.5X patches; this is the same scale of network, not
    their exact architecture.

    Args:
        num_classes: number of output classes.
        pretrained: must be False (trained from scratch).
        widths, hidden: override the convolution widths (four) and the hidden layer.

    Returns:
        :class:`SmallConvNet`.

    Shapes:
        input (B, 3, 48, 48) normalised RGB -> logits (B, num_classes).
    """
    _no_pretrained("patchcnn", pretrained)
    widths = tuple(kw.pop("widths", (32, 64, 128, 128)))
    hidden = int(kw.pop("hidden", 128))
    pools = (True,) * (len(widths) - 1) + (False,)
    return SmallConvNet(widths, pools, hidden, num_classes, **kw)
