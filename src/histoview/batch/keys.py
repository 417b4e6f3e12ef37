"""A slide's task key: what it contains and what was asked of it.

``task key = sha256(content hash of the slide, settings hash)[:32]``, where the content hash is
:func:`histoview.io.content_hash.content_hash` (a slide copied elsewhere is the same slide; one
rewritten under its name is not) and the settings hash covers everything that changes a
slide's outputs (:meth:`BatchSettings.identity`): the methods, the model and the SHA-256 of
each method's checkpoint, the pixel size, the region, the target class, the method options
and :data:`OUTPUT_FORMAT` (bumped when the batch's output layout changes). How the work is
done (device, batch size, tile loaders, worker count, the feature cache) is not in it: it
does not change what is written.

A later run with the same key skips the slide; any change redoes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: version of the batch's output layout (per-slide folder, record, summary columns)
OUTPUT_FORMAT = 1


@dataclass(frozen=True)
class BatchSettings:
    """What a batch asks of each slide (all plain values: sent to the workers as is).

    Attributes:
        methods: registry methods with a slide processor, run in this order.
        model, checkpoint: the weights (default: the method's newest or demo weights).
        pixel_size_um: the slides' level-0 um/px, overriding the files'.
        region: ``"x,y,w,h"`` (level-0 pixels, or ``um``) or None for the whole slide.
        target_class: class name or index to explain.
        options: method options.
        device: ``cpu``, ``cuda``, ``cuda:1``; None: CUDA when the worker has it.
        batch_size: tiles per batch.
        tile_workers: tile-reading processes per slide (None: 2 on CUDA, 0 on the CPU).
        feature_cache: explain_slide's ``feature_cache`` (None: its default; ``"off"``; a
            folder), passed only where explain_slide takes it.
        torch_threads: torch CPU threads in each worker (None: leave torch's default).
    """

    methods: tuple[str, ...]
    model: str | None = None
    checkpoint: str | None = None
    pixel_size_um: float | None = None
    region: str | None = None
    target_class: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    batch_size: int = 16
    tile_workers: int | None = None
    feature_cache: str | None = None
    torch_threads: int | None = None

    def identity(self, checkpoint_hashes: dict[str, str]) -> dict[str, Any]:
        """The settings that decide the outputs (module docstring), with each method's
        checkpoint SHA-256 (``checkpoint_hashes``)."""
        return {
            "output_format": OUTPUT_FORMAT,
            "methods": list(self.methods),
            "model": self.model,
            "checkpoints": {m: checkpoint_hashes[m] for m in self.methods},
            "pixel_size_um": self.pixel_size_um,
            "region": self.region,
            "target_class": self.target_class,
            "options": self.options,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_hashes(settings: BatchSettings) -> dict[str, str]:
    """Each method's checkpoint SHA-256 (the weights :func:`explain_slide` will load).

    Raises:
        CheckpointError: a method without weights (named), before any slide is started.
    """
    from histoview.explain.run import checkpoint_for_method
    from histoview.models.checkpoint import sha256_file

    return {
        m: sha256_file(
            checkpoint_for_method(m, model=settings.model, checkpoint=settings.checkpoint)
        )
        for m in settings.methods
    }


def settings_hash(identity: dict[str, Any]) -> str:
    """The SHA-256 of the settings' canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def task_key(slide: str | Path, settings_digest: str) -> str:
    """The slide's task key: its content hash with the settings' hash (32 hex digits)."""
    from histoview.io.content_hash import content_hash

    return hashlib.sha256(f"{content_hash(slide)}:{settings_digest}".encode()).hexdigest()[:32]
