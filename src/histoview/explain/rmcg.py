"""RMCG's built-in explanation: the graph-pooling attention over pixel nodes (RMCG paper).

RMCG pools its pixel-node graph with attention weights that sum to one per
image (:class:`histoview.models.rmcg.RMCG`); the weight of each node says how
much that feature-map pixel contributes to the image representation. The
weights do not depend on which class is explained (pooling happens before the
classifier); for class-specific maps use Grad-CAM on the same model
(``explain_cnn``, target layer ``backbone.layer4``).
"""

from __future__ import annotations

import numpy as np

from histoview.explain.base import DenseMap, Explanation, peak_normalised


def explain_rmcg(
    model,
    image: np.ndarray,
    *,
    target_class: int | None = None,
    checkpoint_meta: dict | None = None,
    checkpoint_sha256: str | None = None,
) -> Explanation:
    """Explain an RMCG model's decision on one RGB image by its node attention.

    Args:
        model: an RMCG model (``model.model_config.explanation == "node_attention"``).
        image: (H, W, 3) uint8 RGB; resized to the model's input size.
        target_class: class recorded as explained (default: predicted, by the
            checkpoint's operating threshold for binary models); the attention
            map itself is class-independent.
        checkpoint_meta: checkpoint sidecar (classes, threshold, synthetic...).
        checkpoint_sha256: weights hash (default ``checkpoint_meta["weights_sha256"]``).

    Returns:
        :class:`Explanation` with ``method="rmcg"`` and ``values`` the (h, w)
        node attention at feature-map resolution, divided by its maximum (so in
        [0, 1]; ``extra["attention_max"]`` is the raw maximum, the raw weights
        summing to one).
    """
    import torch

    from histoview.explain.base import decide_class
    from histoview.explain.gradcam import class_names, decision_extra
    from histoview.models.inputs import InputSpec

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if not hasattr(model, "last_node_attention"):
        raise TypeError(f"{type(model).__name__} has no node attention; is it an RMCG model?")
    config = model.model_config
    meta = dict(checkpoint_meta or {})
    device = next(model.parameters()).device
    # the one input path: the checkpoint's stain normalisation, resize, mean/std
    x = InputSpec.from_checkpoint(meta, model).images(image)[None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was_training)
    probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    attention = model.last_node_attention[0].float().cpu().numpy()
    classes = class_names(meta, len(probs))
    decided, operating = decide_class(probs, meta)
    target = decided if target_class is None else int(target_class)
    if not 0 <= target < len(probs):
        raise ValueError(f"target_class {target} out of range for {len(probs)} classes")
    values, peak = peak_normalised(attention)
    return Explanation(
        method="rmcg",
        model=config.name,
        classes=classes,
        probabilities=probs.astype(np.float32),
        target_class=target,
        values=values,
        geometry=DenseMap(image_shape=tuple(image.shape[:2])),
        checkpoint_sha256=checkpoint_sha256 or meta.get("weights_sha256"),
        synthetic=bool(meta.get("synthetic", False)),
        decided_class=decided,
        extra={
            "node_grid": list(values.shape),
            "attention_max": peak,
            **decision_extra(decided, operating, classes),
        },
    )
