"""Out-of-distribution warnings: an image unlike what a checkpoint was trained on.

A prediction on an image unlike the training images is an extrapolation; the explanation
says so next to the prediction (``Explanation.extra["warnings"]``, which the docks, the
compare view, the report and ``histoview explain`` show). Two checks, from what the
checkpoint's sidecar records:

* **Pixel size.** The image's pixel size (um/px: the file's, the user's or the estimate)
  against the checkpoint's ``pixel_size_um``; a ratio beyond :data:`PIXEL_SIZE_FACTOR` (about
  1.5, in either direction) warns. Patches and whole-image inputs are cut at the image's
  own pixels, so a 2x finer image shows the model tissue at twice the magnification it
  learned; a tiled patch classifier resamples its tiles, but from much finer or coarser
  tissue than it was trained on (the IDC weights: 2.5X only). A real (not synthetic)
  checkpoint on an image of unknown pixel size warns too. Nuclei-graph models are exempt:
  they detect nuclei and join them in micrometres, at any pixel size.
* **Stain.** With a stain normaliser in the checkpoint (fitted to the training data), the
  distance of the image's stain from it (:meth:`~histoview.preprocessing.stain.
  StainNormaliser.stain_distance`): beyond :data:`STAIN_LIMITS` (Reinhard: 2 reference
  standard deviations of an L*a*b* channel's mean; Macenko: 20 degrees between stain
  vectors) warns. Normalisation maps such an image, but from far outside the colours the
  model saw. On the IDC development patients the whole-mosaic distances are at most 1.6 SD
  (Reinhard) and 14 degrees (Macenko); BreakHis 100X images from another lab are 2.0-2.3 SD
  and a synthetic phantom 3.8 SD.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: a pixel size this many times the checkpoint's, or its inverse, warns
PIXEL_SIZE_FACTOR = 1.5
#: stain distance beyond which an image warns, per normalisation method
STAIN_LIMITS = {"reinhard": 2.0, "macenko": 20.0}
_STAIN_UNITS = {"reinhard": "standard deviations of an L*a*b* channel", "macenko": "degrees"}


def pixel_size_warning(
    meta: dict[str, Any], pixel_size_um: float | None, *, kind: str | None = None
) -> str | None:
    """The pixel-size warning of the module docstring, or None."""
    trained = meta.get("pixel_size_um")
    if kind == "graph" or not trained:
        return None
    if not pixel_size_um:
        if meta.get("synthetic"):
            return None
        return (
            f"the image's pixel size is unknown: the model was trained at {trained:.3g} um/px "
            "and is used as if the image were at that scale; give the pixel size to check it"
        )
    ratio = float(pixel_size_um) / float(trained)
    if max(ratio, 1 / ratio) <= PIXEL_SIZE_FACTOR:
        return None
    finer = "finer (more magnified)" if ratio < 1 else "coarser (less magnified)"
    factor = max(ratio, 1 / ratio)
    return (
        f"out of distribution: the image is at {pixel_size_um:.3g} um/px, {factor:.1f}"
        f" times {finer} than the {trained:.3g} um/px the model was trained at; its "
        "prediction and map are extrapolations"
    )


def stain_warning(meta: dict[str, Any], image: np.ndarray) -> str | None:
    """The stain warning of the module docstring, or None (no normaliser in the checkpoint,
    or an image whose stain cannot be estimated: blank images are refused elsewhere)."""
    section = meta.get("stain_normalisation")
    if not section:
        return None
    from histoview.preprocessing.stain import StainNormalisationError, StainNormaliser

    norm = StainNormaliser.from_dict(section)
    try:
        distance = norm.stain_distance(_sample(np.asarray(image)))
    except StainNormalisationError:
        return None
    limit = STAIN_LIMITS[norm.method]
    if distance <= limit:
        return None
    return (
        f"out of distribution: the image's stain is {distance:.1f} {_STAIN_UNITS[norm.method]} "
        f"from the training data's ({norm.method}; warning above {limit:g}); the stain "
        "normaliser maps it, but from colours the model never saw"
    )


def _sample(image: np.ndarray, limit: int = 4_000_000) -> np.ndarray:
    """The image, or every k-th row and column of it when it has more than ``limit`` pixels
    (the statistics are means: a regular subsample estimates them)."""
    k = int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / limit)))
    return np.ascontiguousarray(image[::k, ::k]) if k > 1 else image


def ood_warnings(
    meta: dict[str, Any],
    image: np.ndarray,
    pixel_size_um: float | None,
    *,
    kind: str | None = None,
) -> list[str]:
    """Every out-of-distribution warning for ``image`` (H, W, 3) uint8 at ``pixel_size_um``
    um/px (None: unknown) under the checkpoint sidecar ``meta``; ``kind`` the model kind."""
    found = (pixel_size_warning(meta, pixel_size_um, kind=kind), stain_warning(meta, image))
    return [w for w in found if w]
