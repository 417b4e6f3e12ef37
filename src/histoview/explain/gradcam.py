"""Grad-CAM, Grad-CAM++ and Dynamic-Threshold Grad-CAM for the image CNNs.

Grad-CAM (Selvaraju et al., ICCV 2017): with ``A^k`` the target layer's
activation maps and ``y^c`` the class score (logit), channel weights are
``alpha_k = mean_ij dy^c / dA^k_ij`` and the map is ``ReLU(sum_k alpha_k A^k)``,
upsampled to the input. The CSPResNet50-FPN-SE paper (Sec. 4.6) and DALAResNet50
(Liu et al., arXiv:2308.13150; both in ``docs/citations.md``) use it to show where the
model looks; Liu et al. add a dynamic threshold (:func:`dynamic_threshold`).

Design (template method, after pytorch-grad-cam's ``base_cam`` without its
weak spots): :class:`BaseCAM` owns the hook and every piece of global state it
touches, releasing them in ``finally``; subclasses only say how channels are
weighted. Cost is about one forward pass: the forward runs under
``torch.no_grad()``; a forward hook on the target layer swaps its output for a
detached leaf that requires grad and switches grad mode on for the rest of the
forward, with all parameters' ``requires_grad`` off. The autograd graph thus
spans only target layer -> logits, and ``torch.autograd.grad`` never reaches
the earlier network or any parameter (no ``.grad`` is written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histoview.explain.base import DenseMap, Explanation, decide_class, peak_normalised
from histoview.models.inputs import InputSpec
from histoview.preprocessing.transforms import DIHEDRAL, dihedral, inverse_dihedral

TargetSpec = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], Any] | None


@dataclass
class CAMForward:
    """A finished hooked forward pass, ready for :meth:`BaseCAM.compute` with any target.

    Attributes:
        logits: (B, C) model output; its graph reaches back to ``activation`` only.
        activation: (B, K, h, w) detached target-layer output (a leaf requiring grad).
        input_size: (H, W) of the input, for upsampling.
    """

    logits: torch.Tensor
    activation: torch.Tensor
    input_size: tuple[int, int]


@dataclass
class CAMResult:
    """Class activation maps of a batch.

    Attributes:
        cam: (B, H, W) float, >= 0, at input resolution, not normalised.
        logits: (B, C) detached logits.
        target: (B,) int64, the class each map explains.
        weights: (B, K) channel weights.
    """

    cam: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor = field(repr=False)


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """``model``'s submodule at a dotted path (``"backbone.layer4"``); KeyError lists options."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise KeyError(f"no module {path!r} in {type(model).__name__} (e.g. {names})") from None


class BaseCAM:
    """Class activation mapping with a cheap, hook-limited backward (template method).

    Subclasses override :meth:`channel_weights` only.

    Args:
        model: a classifier returning (B, C) logits; put in eval mode while explaining.
        target_layer: dotted path of the layer (or the module); default
            ``model.model_config.target_layer``.
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | None = None) -> None:
        self.model = model
        if target_layer is None:
            target_layer = getattr(getattr(model, "model_config", None), "target_layer", None)
            if target_layer is None:
                raise ValueError("no target_layer given and the model's config names none")
        self.layer_name = (
            target_layer if isinstance(target_layer, str) else type(target_layer).__name__
        )
        self.layer = (
            get_submodule(model, target_layer) if isinstance(target_layer, str) else target_layer
        )

    def channel_weights(
        self, activation: torch.Tensor, grad: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """(B, K) channel weights from activations and score gradients (B, K, h, w)."""
        raise NotImplementedError

    @contextmanager
    def hooked(self) -> Iterator[dict]:
        """Hook the target layer and freeze parameters; undo both and grad mode on exit or error.

        Yields a dict whose ``"activation"`` the hook fills.
        """
        captured: dict = {"activation": None}

        def hook(module, inputs, output):
            if captured["activation"] is not None:
                raise RuntimeError(f"target layer {self.layer_name!r} ran twice in one forward")
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"target layer {self.layer_name!r} must return a tensor")
            leaf = output.detach().requires_grad_(True)
            captured["activation"] = leaf
            torch.set_grad_enabled(True)  # the caller's no_grad() restores it on exit
            return leaf.clone()  # later in-place ops (e.g. ReLU(inplace)) must not touch the leaf

        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        grad_mode = torch.is_grad_enabled()
        handle = self.layer.register_forward_hook(hook)
        try:
            for p in params:
                p.requires_grad_(False)
            yield captured
        finally:
            handle.remove()
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            torch.set_grad_enabled(grad_mode)

    def forward(self, x: torch.Tensor) -> CAMForward:
        """Hooked forward (under no_grad up to the target layer); model in eval mode.

        Args:
            x: (B, 3, H, W) normalised input (moved to the model's device).

        Returns:
            :class:`CAMForward`, from which :meth:`compute` makes maps for any class.
        """
        device = next(self.model.parameters()).device
        x = x.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.hooked() as captured, torch.no_grad():
                logits = self.model(x)
        finally:
            self.model.train(was_training)
        act = captured["activation"]
        if act is None:
            raise RuntimeError(f"target layer {self.layer_name!r} was not used in the forward pass")
        if act.ndim != 4:
            raise ValueError(
                f"target layer {self.layer_name!r} output is {tuple(act.shape)}, not (B, K, h, w)"
            )
        return CAMForward(logits, act, tuple(x.shape[-2:]))

    def compute(self, fwd: CAMForward, target_class: TargetSpec = None) -> CAMResult:
        """Maps for ``target_class`` from a :class:`CAMForward`.

        Args:
            fwd: result of :meth:`forward`.
            target_class: None (each sample's arg-max), a class index, one index
                per sample, or a callable ``logits -> index/indices``.

        Returns:
            :class:`CAMResult`.
        """
        logits = fwd.logits
        target = _resolve_target(target_class, logits.detach())
        if not logits.requires_grad:
            raise RuntimeError(f"the logits do not depend on target layer {self.layer_name!r}")
        with torch.enable_grad():  # also when the caller runs under no_grad()
            score = logits.gather(1, target[:, None]).sum()  # samples independent in eval mode
            # retain_graph: one forward can serve several targets; the graph is only the head
            (grad,) = torch.autograd.grad(score, fwd.activation, retain_graph=True)
        with torch.no_grad():
            act = fwd.activation.detach()
            weights = self.channel_weights(act, grad, logits.detach())
            cam = F.relu(torch.einsum("bk,bkhw->bhw", weights, act))
            if tuple(cam.shape[-2:]) != fwd.input_size:
                cam = F.interpolate(
                    cam[:, None], size=fwd.input_size, mode="bilinear", align_corners=False
                )[:, 0]
        return CAMResult(cam.clamp_min(0), logits.detach(), target, weights)

    def __call__(self, x: torch.Tensor, target_class: TargetSpec = None) -> CAMResult:
        """Forward then :meth:`compute`: (B, H, W) maps for ``target_class`` (default predicted)."""
        return self.compute(self.forward(x), target_class)


def _resolve_target(spec: TargetSpec, logits: torch.Tensor) -> torch.Tensor:
    B, C = logits.shape
    if callable(spec):
        spec = spec(logits)
    if spec is None:
        target = logits.argmax(1)
    else:
        target = torch.as_tensor(spec, dtype=torch.long, device=logits.device).reshape(-1)
        if target.numel() == 1:
            target = target.expand(B)
    if target.shape != (B,) or int(target.min()) < 0 or int(target.max()) >= C:
        raise ValueError(f"target class {spec!r} is not one index in [0, {C}) per sample")
    return target.to(logits.device)


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1-2): weights are the spatial mean of the gradient."""

    def channel_weights(self, activation, grad, logits):
        return grad.mean(dim=(2, 3))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19 with the exponential-score closed form).

    ``alpha = g^2 / (2 g^2 + sum_ij A * g^3)``; weights ``sum_ij alpha * relu(g)``.
    """

    def channel_weights(self, activation, grad, logits):
        g2 = grad.square()
        denom = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * grad
        alpha = torch.where(grad != 0, g2 / (denom + 1e-7), torch.zeros_like(grad))
        return (alpha * F.relu(grad)).sum(dim=(2, 3))


CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "dt-gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
}


def dynamic_threshold(
    cam: np.ndarray, method: str = "otsu", percentile: float = 80.0
) -> tuple[np.ndarray, float]:
    """Dynamic-Threshold Grad-CAM (Liu et al., arXiv:2308.13150): a per-image threshold on the map.

    Liu et al. apply "adaptive thresholding" to each Grad-CAM map to keep only
    the decision-relevant region, but does not state the rule. We use Otsu's
    threshold on the map's values by default: it is per image, parameter-free,
    and picks the value that best separates the map into a high and a low mode
    (maximal between-class variance). ``"percentile"`` keeps the top
    ``100 - percentile`` % of pixels instead.

    Args:
        cam: (h, w) map (any real values; typically Grad-CAM in [0, 1]).
        method: ``"otsu"`` or ``"percentile"``.
        percentile: the percentile used by ``method="percentile"``.

    Returns:
        ``(thresholded, threshold)``: float32 map with values above the threshold
        kept and the rest zeroed, and the threshold. A constant map gives zeros.
    """
    values = np.asarray(cam, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("CAM has non-finite values")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values), hi
    if method == "otsu":
        from skimage.filters import threshold_otsu

        thr = float(threshold_otsu(values, nbins=256))
    elif method == "percentile":
        thr = float(np.percentile(values, percentile))
    else:
        raise ValueError(f"unknown threshold method {method!r}; use 'otsu' or 'percentile'")
    return np.where(values > thr, values, 0).astype(np.float32), thr


def class_names(meta: dict, num_classes: int) -> tuple[str, ...]:
    """Class names from checkpoint metadata, else benign/malignant (binary) or class_i."""
    classes = meta.get("classes")
    if classes and len(classes) == num_classes:
        return tuple(str(c) for c in classes)
    return (
        ("benign", "malignant")
        if num_classes == 2
        else tuple(f"class_{i}" for i in range(num_classes))
    )


def decision_extra(decided: int, threshold: float | None, classes: Sequence[str]) -> dict:
    """``extra`` entries recording an operating-threshold decision (empty without one)."""
    if threshold is None:
        return {}
    return {
        "operating_threshold": threshold,
        "predicted_class_at_operating_threshold": classes[decided],
    }


def explain_cnn(
    model: nn.Module,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    target_class: int | None = None,
    tta: bool = False,
    checkpoint_meta: dict | None = None,
    checkpoint_sha256: str | None = None,
    threshold_method: str = "otsu",
) -> Explanation:
    """Explain an image CNN's decision on one RGB image with Grad-CAM, DT Grad-CAM or Grad-CAM++.

    Args:
        model: a registered image model (``model.model_config`` gives input
            size, normalisation, target layer and name).
        image: (H, W, 3) uint8 RGB; resized to the model's input size.
        method: ``"gradcam"``, ``"dt-gradcam"`` (Grad-CAM then
            :func:`dynamic_threshold`) or ``"gradcam++"``.
        target_class: class to explain; default the predicted class (by the
            operating threshold when ``checkpoint_meta`` has one, see
            :func:`decide_class`).
        tta: average probabilities over the 8 dihedral transforms (as the
            CSPResNet50-FPN-SE paper does);
            each transform's map is mapped back and the maps averaged.
        checkpoint_meta: checkpoint sidecar (classes, threshold, synthetic...).
        checkpoint_sha256: weights hash recorded in the explanation (default
            ``checkpoint_meta["weights_sha256"]``).
        threshold_method: ``"otsu"`` or ``"percentile"`` for ``"dt-gradcam"``.

    Returns:
        :class:`Explanation` with ``values`` (h, w) float32 in [0, 1] at the
        model's input resolution (divided by its maximum; zero where no
        evidence) on a :class:`DenseMap` of the image.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(CAM_METHODS)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    config = model.model_config
    meta = dict(checkpoint_meta or {})
    # the one input path: the checkpoint's stain normalisation, resize, mean/std
    x = InputSpec.from_checkpoint(meta, model).images(image)
    transforms = DIHEDRAL if tta else ((0, False),)
    groups: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for k, flip in transforms:  # batch the transforms that give the same input shape
        groups.setdefault(tuple(dihedral(x, k, flip).shape[-2:]), []).append((k, flip))

    cam_engine = CAM_METHODS[method](model)
    passes = []
    for group in groups.values():
        batch = torch.stack([dihedral(x, k, flip) for k, flip in group])
        passes.append((group, cam_engine.forward(batch)))
    all_logits = torch.cat([fwd.logits.detach() for _, fwd in passes])
    probs = torch.softmax(all_logits.float(), dim=1).mean(0).cpu().numpy()
    classes = class_names(meta, len(probs))
    decided, operating = decide_class(probs, meta)
    extra = decision_extra(decided, operating, classes)
    target = decided if target_class is None else int(target_class)
    if not 0 <= target < len(probs):
        raise ValueError(f"target_class {target} out of range for {len(probs)} classes")

    total = None
    for group, fwd in passes:
        cams = cam_engine.compute(fwd, target).cam
        for (k, flip), cam in zip(group, cams):
            back = inverse_dihedral(cam, k, flip)
            total = back if total is None else total + back
    cam = (total / len(transforms)).float().cpu().numpy()
    cam, peak = peak_normalised(cam)
    threshold = None
    if method == "dt-gradcam":
        cam, threshold = dynamic_threshold(cam, threshold_method)
        extra["threshold_method"] = threshold_method
    return Explanation(
        method=method,
        model=config.name,
        classes=classes,
        probabilities=probs.astype(np.float32),
        target_class=target,
        values=cam,
        geometry=DenseMap(image_shape=tuple(image.shape[:2])),
        checkpoint_sha256=checkpoint_sha256 or meta.get("weights_sha256"),
        synthetic=bool(meta.get("synthetic", False)),
        threshold=threshold,
        decided_class=decided,
        extra={
            "target_layer": cam_engine.layer_name,
            "input_size": list(cam.shape),
            "tta": bool(tta),
            "cam_max": peak,
            **extra,
        },
    )
