"""A-MIL's explanation: the attention weight of each patch (Patil et al., 2019, equation 3)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from histoview.explain.base import Explanation, decide_class


@torch.no_grad()
def explain_amil(
    model,
    image: np.ndarray,
    *,
    meta: dict[str, Any] | None = None,
    checkpoint_sha256: str | None = None,
    stride: int | None = None,
    max_background: float | None = None,
    downsample: float = 1.0,
    level: int = 0,
    image_shape: tuple[int, int] | None = None,
) -> Explanation:
    """Run A-MIL on one image and return its patch-attention grid.

    Args:
        model: an :class:`~histoview.models.amil.AMIL` (eval mode).
        image: (H, W, 3) uint8 RGB of the level the model sees.
        meta: the checkpoint's metadata (classes, patch settings).
        stride, max_background: override the checkpoint's patch settings.
        downsample, level, image_shape: where ``image`` sits in a pyramid, so
            the grid is placed in level-0 pixels.

    Returns:
        An :class:`Explanation` with ``method="amil"``, one attention weight per
        patch (they sum to 1) on a :class:`PatchGrid`. Attention in A-MIL does
        not depend on the class, so ``target_class`` is the predicted class (decided
        with the checkpoint's operating threshold for binary models, see ``decide_class``).
    """
    from dataclasses import replace

    from histoview.models.inputs import InputSpec

    meta = meta or {}
    spec = InputSpec.from_checkpoint(meta, model)
    if stride is not None:
        spec = replace(spec, stride=int(stride))
    if max_background is not None:
        spec = replace(spec, max_background=max_background)
    size, stride = spec.patch_size, spec.stride
    bag, grid = spec.bag(image, level=level, downsample=downsample, image_shape=image_shape)
    warnings = _tissue_warnings(image, grid, spec)
    cfg = model.model_config
    device = next(model.parameters()).device
    x = bag.to(device)
    model.eval()
    logits, attention = model(x, return_attention=True)
    probs = torch.softmax(logits.float(), -1)[0].cpu().numpy()
    classes = tuple(meta.get("classes") or [f"class_{i}" for i in range(len(probs))])
    decided, operating = decide_class(probs, meta)
    return Explanation(
        method="amil",
        model=cfg.name,
        classes=classes,
        probabilities=probs,
        target_class=decided,
        decided_class=decided,
        values=attention[0].cpu().numpy().astype(np.float32),
        geometry=grid,
        checkpoint_sha256=checkpoint_sha256,
        synthetic=bool(meta.get("synthetic", False)),
        extra={
            "patch_size": size,
            "stride": stride,
            "num_patches": len(grid),
            "level": level,
            "grid_shape": list(grid.grid_shape),
            "operating_threshold": operating,
            **({"warnings": warnings} if warnings else {}),
        },
    )


def _tissue_warnings(image: np.ndarray, grid, spec) -> list[str]:
    """Refuse a bag without tissue; warn when few patches hold tissue.

    :func:`~histoview.preprocessing.patches.extract_patches` keeps at least one patch even
    when every patch is more glass than ``max_background``: that is no tissue, not a bag.
    """
    if spec.max_background is None:
        return []
    from histoview.preprocessing.patches import glass_fraction

    total = int(np.prod(grid.grid_shape))
    if len(grid) == 1 and total > 1:
        r, c = (int(v) * spec.stride for v in grid.grid_index[0])
        patch = np.asarray(image)[r : r + spec.patch_size, c : c + spec.patch_size, :3]
        if float(glass_fraction(patch[None])[0]) > spec.max_background:
            raise ValueError(
                f"no tissue patches: all {total} patches are more than "
                f"{spec.max_background:.0%} glass (a blank image, or tissue too faint to "
                "detect); no prediction is made from an empty bag"
            )
    if len(grid) < 0.1 * total:
        return [
            f"only {len(grid)} of {total} patches hold tissue: the prediction rests on "
            "little tissue"
        ]
    return []
