"""Patch classifiers on images larger than their field: classified and explained tile by tile.

A *tiled* image model (:attr:`~histoview.models.inputs.InputSpec.tiled`: trained on fields of
its input size at its pixel size, e.g. the IDC weights on 50 x 50 px patches of 2.5X
tissue) must not be given a whole mosaic squeezed into one 48 x 48 input. Here an image
whose side is more than :data:`TILE_IF_LARGER` times the model's field is cut into
non-overlapping tiles of that field (``input_size * model um/px / image um/px`` image pixels,
from the image's top-left corner; the right and bottom edges padded with white glass),
tiles that are more than :data:`MAX_GLASS` glass dropped
(:func:`~histoview.preprocessing.patches.glass_fraction`), and each tile is fed exactly as
in training: stain-normalised on its own, resized to the input, normalised
(:class:`~histoview.models.inputs.InputSpec`). Smaller images go to
:func:`~histoview.explain.gradcam.explain_cnn` whole.

Per tile, in batches: the class probabilities and the raw CAM of one class
(:func:`~histoview.explain.slide_cam.tile_cams`: one forward and one backward, Grad-CAM or
Grad-CAM++), upsampled bilinearly to the tile's pixels as single-image Grad-CAM is to its
input. As on a whole slide (:mod:`histoview.explain.slide_cam`, :mod:`~histoview.explain.
slide_norm`) the raw maps are kept in logit units across tiles and normalised once for
the image: divided by their 99.5th percentile over the tiles' pixels and clipped to
[0, 1]; DT Grad-CAM zeroes the map at and below Otsu's threshold of those pixels.

**Class explained**: ``target_class``, else the checkpoint's last class (``idc``, the
finding): the same for every tile, as on slides. **Prediction**: the mean of the tiles'
probabilities, with the largest tile probability, the share of tiles decided as each
class and the per-tile probability grid (``extra["tile_probabilities"]``: rows of the
target class's probability, None where a tile was glass) beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: an image is tiled when a side is more than this many times the model's field
TILE_IF_LARGER = 1.5
#: tiles with more glass than this are not classified (blank cells of a mosaic)
MAX_GLASS = 0.9
#: the normalisation's robust maximum (as on slides)
ROBUST_PERCENTILE = 99.5


def field_pixels(spec, pixel_size_um: float | None) -> int:
    """Edge, in the image's pixels, of the model's field: its input size at its pixel size
    (the input size itself when either pixel size is unknown)."""
    size = int(spec.input_size[0])
    if pixel_size_um and spec.pixel_size_um:
        return max(1, int(round(size * float(spec.pixel_size_um) / float(pixel_size_um))))
    return size


def needs_tiles(spec, image_shape: tuple[int, int], pixel_size_um: float | None) -> bool:
    """Whether a tiled model's image is classified tile by tile (module docstring)."""
    if not getattr(spec, "tiled", False) or spec.kind != "image":
        return False
    field = field_pixels(spec, pixel_size_um)
    return max(image_shape[:2]) > TILE_IF_LARGER * field


def tile_image(image: np.ndarray, field: int, *, max_glass: float = MAX_GLASS):
    """``(tiles (N, field, field, 3) uint8, grid)`` of an (H, W, 3) image: non-overlapping
    tiles from the top-left corner, the last row and column padded with white, glass tiles
    dropped (at least one kept); ``grid`` a :class:`~histoview.preprocessing.patches.
    PatchGrid` whose ``image_shape`` is the padded image's."""
    from histoview.preprocessing.patches import extract_patches

    h, w = image.shape[:2]
    rows, cols = -(-h // field), -(-w // field)
    padded = np.full((rows * field, cols * field, 3), 255, np.uint8)
    padded[:h, :w] = image
    return extract_patches(padded, field, field, max_background=max_glass)


def tile_probabilities(model, spec, tiles: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """(N, C) float32 softmax probabilities of tiles (N, f, f, 3) uint8, each fed as in
    training (stain-normalised on its own, resized, normalised), in eval mode."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(tiles), batch_size):
                x = spec.images(tiles[i : i + batch_size]).to(device)
                out.append(torch.softmax(model(x).float(), 1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def explain_tiled_cnn(
    model,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    pixel_size_um: float | None = None,
    target_class: int | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    checkpoint_sha256: str | None = None,
    batch_size: int = 64,
):
    """Grad-CAM, DT Grad-CAM or Grad-CAM++ of a tiled model on an image larger than its
    field (module docstring).

    Args:
        model: a registered image model whose checkpoint says ``input.tiled``.
        image: (H, W, 3) uint8 RGB at ``pixel_size_um`` um/px (None: the model's).
        method: ``"gradcam"``, ``"dt-gradcam"`` or ``"gradcam++"``.
        target_class: class explained (None: the checkpoint's last class).
        checkpoint_meta, checkpoint_sha256: the checkpoint's sidecar and weights hash.
        batch_size: tiles per forward and backward.

    Returns:
        :class:`~histoview.explain.base.Explanation`: ``values`` (H, W) float32 in [0, 1] on
        a :class:`~histoview.explain.base.DenseMap`; ``probabilities`` the tiles' mean.
    """
    import torch
    import torch.nn.functional as F

    from histoview.explain.base import DenseMap, Explanation, decide_class
    from histoview.explain.gradcam import CAM_METHODS, class_names, decision_extra
    from histoview.explain.slide_cam import tile_cams
    from histoview.models.inputs import InputSpec

    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(CAM_METHODS)}")
    meta = dict(checkpoint_meta or {})
    spec = InputSpec.from_checkpoint(meta, model)
    field = field_pixels(spec, pixel_size_um)
    tiles, grid = tile_image(np.asarray(image), field)
    classes = class_names(meta, len(meta.get("classes") or ()) or 2)
    target = len(classes) - 1 if target_class is None else int(target_class)
    if not 0 <= target < len(classes):
        raise ValueError(f"target_class {target} out of range for {len(classes)} classes")
    engine = CAM_METHODS[method](model)
    device = next(model.parameters()).device
    ph, pw = grid.image_shape
    canvas = np.zeros((ph, pw), np.float32)
    probs = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(tiles), batch_size):
            x = spec.images(tiles[i : i + batch_size]).to(device)
            maps = tile_cams(engine, x, target)
            probs.append(maps.probabilities)
            up = F.interpolate(
                torch.from_numpy(maps.maps)[:, None],
                size=(field, field),
                mode="bilinear",
                align_corners=False,
            )[:, 0].numpy()
            for (r, c), m in zip(grid.origins[i : i + batch_size], up):
                canvas[r : r + field, c : c + field] = m
    finally:
        model.train(was_training)
    p = np.concatenate(probs)
    covered = grid.rasterize(np.ones(len(grid)), fill=0.0) > 0
    canvas, covered = (
        canvas[: image.shape[0], : image.shape[1]],
        covered[: image.shape[0], : image.shape[1]],
    )
    values, robust_max = _normalised(canvas, covered)
    threshold = None
    extra: dict[str, Any] = {}
    if method == "dt-gradcam" and covered.any():
        from skimage.filters import threshold_otsu

        inside = values[covered]
        threshold = float(threshold_otsu(inside, nbins=256)) if np.ptp(inside) > 0 else 0.0
        values = np.where(values > threshold, values, 0).astype(np.float32)
        extra["threshold_method"] = "otsu over the tiles' pixels"
    mean = p.mean(0)
    decided, operating = decide_class(mean, meta)
    per_tile = np.array([decide_class(row, meta)[0] for row in p])
    tile_grid = grid.to_grid(p[:, target], fill=np.nan)
    extra |= decision_extra(decided, operating, classes)
    extra |= {
        "tiled": True,
        "tiles": int(len(grid)),
        "tile_px": int(field),
        "target_layer": engine.layer_name,
        "cam_robust_max": robust_max,
        "max_tile_probability": float(p[:, target].max()),
        "tiles_decided": {c: float((per_tile == k).mean()) for k, c in enumerate(classes)},
        "tile_probabilities": [
            [None if np.isnan(v) else round(float(v), 4) for v in row] for row in tile_grid
        ],
    }
    return Explanation(
        method=method,
        model=model.model_config.name,
        classes=classes,
        probabilities=mean.astype(np.float32),
        target_class=target,
        values=values,
        geometry=DenseMap(image_shape=tuple(image.shape[:2])),
        checkpoint_sha256=checkpoint_sha256 or meta.get("weights_sha256"),
        synthetic=bool(meta.get("synthetic", False)),
        threshold=threshold,
        decided_class=decided,
        extra=extra,
    )


def _normalised(canvas: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, float]:
    """The map divided by its robust maximum over the tiles' pixels, clipped to [0, 1]."""
    inside = canvas[covered]
    top = float(np.percentile(inside, ROBUST_PERCENTILE)) if inside.size else 0.0
    if top <= 0:
        top = float(inside.max()) if inside.size else 0.0
    if top <= 0:
        return np.zeros_like(canvas), 0.0
    return np.clip(canvas / top, 0, 1).astype(np.float32), top


def explain_image_cnn(
    model,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    pixel_size_um: float | None = None,
    target_class: int | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    checkpoint_sha256: str | None = None,
):
    """An image CNN's CAM explanation: tile by tile when the model is tiled and the image
    larger than its field (:func:`needs_tiles`), else the whole image resized
    (:func:`~histoview.explain.gradcam.explain_cnn`)."""
    from histoview.explain.gradcam import explain_cnn
    from histoview.models.inputs import InputSpec

    spec = InputSpec.from_checkpoint(dict(checkpoint_meta or {}), model)
    if needs_tiles(spec, np.asarray(image).shape, pixel_size_um):
        return explain_tiled_cnn(
            model,
            image,
            method=method,
            pixel_size_um=pixel_size_um,
            target_class=target_class,
            checkpoint_meta=checkpoint_meta,
            checkpoint_sha256=checkpoint_sha256,
        )
    return explain_cnn(
        model,
        image,
        method=method,
        target_class=target_class,
        checkpoint_meta=checkpoint_meta,
        checkpoint_sha256=checkpoint_sha256,
    )
