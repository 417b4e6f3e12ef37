"""The ``data: {type: slide_features}`` section of a training config: an A-MIL attention head
trained on cached patch embeddings (:mod:`histoview.training.feature_bags`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from histoview.training._schema_types import Flag, PathText, PositiveInt


class SlideFeaturesData(BaseModel):
    """``data: {type: slide_features, slides, checkpoint, cache, fill, max_patches}``:

    * ``slides``: a CSV with ``path`` and ``label`` columns (a ``patient`` column keeps each
      patient's slides in one split; paths relative to the CSV's folder);
    * ``checkpoint``: the A-MIL checkpoint whose feature extractor made the embeddings (the
      trained checkpoint takes its extractor, patch settings and pixel size);
    * ``cache``: the feature cache folder (default: the user's);
    * ``fill``: embed the slides the cache lacks first (the slide engine; else they are an
      error naming them);
    * ``max_patches``: at most this many patches of a bag per training step (a random
      subset; evaluation uses every patch).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["slide_features"]
    slides: PathText
    checkpoint: PathText
    cache: PathText | None = None
    fill: Flag = False
    max_patches: PositiveInt | None = None
