"""Fit a training config's stain normaliser (its ``stain`` section) when training starts.

The normaliser (:class:`~histoview.preprocessing.stain.StainNormaliser`) is fitted to the
``reference`` image file, or, with ``reference: training-set``, to at most ``max_images``
images of the **training split** (evenly spaced in the split's order, so every stratum and
patient of it can contribute; validation and test images never do, so their metrics stay
those of unseen data). The run stores it in the checkpoint sidecar (``stain_normalisation``)
and :class:`~histoview.models.inputs.InputSpec` applies it to every image, in training and
at inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histoview.preprocessing.stain import StainNormalisationError, StainNormaliser
from histoview.training.datasets import Sample
from histoview.training.schema import TRAINING_SET, StainSection


def reference_samples(train: list[Sample], max_images: int) -> list[Sample]:
    """At most ``max_images`` of ``train``, evenly spaced in its order (deterministic)."""
    if len(train) <= max_images:
        return list(train)
    picks = np.linspace(0, len(train) - 1, max_images).round().astype(int)
    return [train[i] for i in picks]


def fit_stain_normaliser(
    section: dict[str, Any] | None, train: list[Sample], *, source: str = "config"
) -> StainNormaliser | None:
    """The fitted normaliser a config's ``stain`` section asks for, or None without one.

    Args:
        section: the ``stain`` section (``method``, ``reference``, ``max_images``,
            ``on_no_tissue``; :class:`~histoview.training.schema.StainSection`).
        train: the training split's samples (for ``reference: training-set``).
        source: the config's name, which starts error messages.

    Raises:
        ValueError: the reference cannot be read or holds no usable tissue; the message names
            ``stain.reference`` and the problem.
    """
    if not section:
        return None
    settings = StainSection.model_validate(section)
    norm = StainNormaliser(settings.method, on_no_tissue=settings.on_no_tissue)
    if settings.reference == TRAINING_SET:
        samples = reference_samples(train, settings.max_images)
        if not samples:
            raise ValueError(
                f"{source}: stain.reference 'training-set': the training split is empty"
            )
        images = [s.load()[0] for s in samples]
        what = f"{len(images)} of the {len(train)} training images"
    else:
        from histoview.io import ImageReadError, read_rgb

        try:
            images = [read_rgb(settings.reference)[0]]
        except (ImageReadError, OSError) as exc:
            raise ValueError(f"{source}: stain.reference: {exc}") from None
        what = settings.reference
    try:
        return norm.fit(images)
    except StainNormalisationError as exc:
        raise ValueError(f"{source}: stain.reference ({what}): {exc}") from None
