"""Optimisation for the training loop: loss, optimizer and learning-rate schedule (the
optimizer's state is saved for resuming with the model's: :mod:`histoview.training.resume`).

Every function takes the run's :class:`~histoview.training.engine.TrainOptions` as ``opts``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def loss_function(opts, num_classes: int) -> Callable:
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        eps = opts.label_smoothing
        q = F.one_hot(target, num_classes).float() * (1 - eps) + eps / num_classes
        ce = -(q * logp).sum(-1)
        if opts.loss == "focal":  # Lin et al. 2017, on the smoothed targets (CSPResNet50-FPN-SE)
            pt = logp.gather(1, target[:, None]).squeeze(1).exp()
            ce = (1 - pt) ** opts.focal_gamma * ce
        return ce.mean()

    if opts.loss not in ("cross_entropy", "focal"):
        raise ValueError(f"loss must be 'cross_entropy' or 'focal', got {opts.loss!r}")
    return loss


def _param_groups(model, opts) -> list[dict]:
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return [{"params": [p for p in model.parameters()], "lr_scale": 1.0, "name": "all"}]
    mods = backbone if isinstance(backbone, (list, tuple)) else [backbone]
    bb_ids = {id(p) for m in mods for p in m.parameters()}
    bb = [p for p in model.parameters() if id(p) in bb_ids]
    rest = [p for p in model.parameters() if id(p) not in bb_ids]
    return [
        {"params": bb, "lr_scale": opts.backbone_lr_scale, "name": "backbone"},
        {"params": rest, "lr_scale": 1.0, "name": "head"},
    ]


def make_optimizer(model, opts):
    groups = _param_groups(model, opts)
    if opts.optimizer == "adam":
        return torch.optim.Adam(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {opts.optimizer!r}")


def lr_factor(opts, progress: float) -> float:
    """Warm-up then constant or cosine decay; ``progress`` in epochs (float)."""
    if opts.warmup_epochs > 0 and progress < opts.warmup_epochs:
        return (progress + 1e-3) / opts.warmup_epochs
    if opts.schedule == "cosine":
        span = max(opts.epochs - opts.warmup_epochs, 1e-6)
        return 0.5 * (1 + math.cos(math.pi * min((progress - opts.warmup_epochs) / span, 1.0)))
    return 1.0


def set_lr(optimizer, opts, progress: float, epoch: int) -> None:
    factor = lr_factor(opts, progress)
    for g in optimizer.param_groups:
        frozen = g.get("name") == "backbone" and epoch < opts.freeze_backbone_epochs
        g["lr"] = 0.0 if frozen else opts.lr * factor * g.get("lr_scale", 1.0)
