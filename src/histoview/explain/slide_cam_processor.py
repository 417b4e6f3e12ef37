"""Grad-CAM, DT Grad-CAM, Grad-CAM++ and RMCG node attention on a whole slide.

The slide engine's processor (:mod:`histoview.explain.slide_processor`) for the image CNNs.
Per batch of tiles it computes the raw maps at the target layer's resolution and the
tiles' class probabilities (:mod:`histoview.explain.slide_cam`); the engine blends them into
its store with this processor's cross-fade weights; at the end the map is normalised once
for the slide and DT Grad-CAM's threshold chosen from the slide's values
(:mod:`histoview.explain.slide_norm`).

Output (``<stem>.<method>.ome.tif``), two channels on the map's cell grid (one cell =
``factor`` model pixels, e.g. 16 x 0.5 um = 8 um for customNet):

0. the map for the explained class, in [0, 1]: ``clip(raw / p99.5, 0, 1)`` over the slide's
   tissue cells; DT Grad-CAM: zero at and below the slide-wide Otsu threshold;
1. the explained class's probability, per tile, blended with the same weights (a smooth
   per-cell probability map).

**Class explained**: ``SlideContext.target_class``, else the checkpoint's *last* class
("malignant" for the binary demo weights, the most severe for BACH-style class orders),
the same for every tile: maps of different classes would not be comparable. The summary
names it, and gives the slide's probabilities as the mean over the tiles explained (with the
per-tile maximum and the fraction of tiles decided as that class beside it).

**Tile size**: the model's input size at the model's pixel size unless the option
``tile_size`` asks for a larger field (model pixels, a multiple of the map's cells),
resized to the input as the whole-image models are fed in training
(:class:`~histoview.models.inputs.InputSpec`, the model's one input path: a checkpoint's stain
normaliser runs on each tile in the loader's workers, ``prepare_tile``). Neighbours overlap by a quarter of the tile,
rounded to whole cells (option ``overlap_cells``); option ``window`` (``linear``, ``hann``,
``crop``) picks the blending weights (:func:`~histoview.explain.slide_cam.blend_window`).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np

from histoview.explain.slide_cam import (
    WINDOWS,
    CellGrid,
    blend_window_2d,
    tile_cams,
    tile_node_attention,
    tile_values,
)
from histoview.explain.slide_norm import (
    ROBUST_PERCENTILE,
    SeamMeter,
    SlideScale,
    robust_histogram,
    slide_scale,
)
from histoview.explain.slide_processor import (
    FinalMap,
    MapSpec,
    SlideContext,
    SlideOutcome,
    TileBox,
    TileResult,
)


class CAMSlideProcessor:
    """The slide processor of a CAM method or RMCG's node attention (module docstring).

    Args:
        method: ``"gradcam"``, ``"dt-gradcam"``, ``"gradcam++"`` or ``"rmcg"``.
        model: a loaded image model (``model.model_config``), on ``ctx.device``.
        meta: its checkpoint sidecar (classes, synthetic...).
        checkpoint_sha256: the weights' hash (the engine records it in the summary).
        ctx: the engine's :class:`SlideContext`; ``options`` may hold ``tile_size``,
            ``overlap_cells`` and ``window``.
        percentile: the robust maximum's percentile of the slide-wide normalisation.
    """

    def __init__(
        self,
        method: str,
        model,
        meta: dict,
        checkpoint_sha256: str | None,
        ctx: SlideContext,
        *,
        percentile: float = ROBUST_PERCENTILE,
        title: str | None = None,
    ) -> None:
        from histoview.explain.gradcam import CAM_METHODS, class_names
        from histoview.models.inputs import InputSpec

        # the registry's CAM variants (gradcam.CAM_METHODS), or RMCG's node attention
        if method not in CAM_METHODS and method != "rmcg":
            raise ValueError(
                f"{method!r} is neither a CAM method ({', '.join(CAM_METHODS)}) nor 'rmcg'"
            )
        self.title = title or method  # the registry passes the method's title
        self.method, self.model, self.meta, self.ctx = method, model, dict(meta or {}), ctx
        self.percentile = float(percentile)
        config = model.model_config
        if config.input_size is None or config.input_size[0] != config.input_size[1]:
            raise ValueError(f"{config.name}: slides need a square model input, not {config}")
        self.input_size = tuple(config.input_size)
        # the model's one input path: the checkpoint's stain normaliser, resize, normalise
        self.spec = InputSpec.from_checkpoint(self.meta, model)
        stain = self.spec.stain
        # stain normalisation is CPU work per tile: in the loader's workers
        self.prepare_tile = None if stain is None else functools.partial(stained, stain=stain)
        opts = dict(ctx.options or {})
        self.window_kind = str(opts.get("window", "linear"))
        if self.window_kind not in WINDOWS:
            raise ValueError(f"unknown window {self.window_kind!r}; use one of {WINDOWS}")
        self._cam = None if method == "rmcg" else CAM_METHODS[method](model)
        probe = self._maps(np.full((1, *self.input_size, 3), 255, np.uint8), 0, stained=True)
        self.num_classes = probe.probabilities.shape[1]
        self.classes = class_names(self.meta, self.num_classes)
        target = self.num_classes - 1 if ctx.target_class is None else int(ctx.target_class)
        if not 0 <= target < self.num_classes:
            raise ValueError(f"target_class {target} out of range for {self.num_classes} classes")
        self.target_class = target
        self.cells = int(probe.maps.shape[-1])
        self.tile_size = int(opts.get("tile_size") or self.input_size[0])
        if self.tile_size % self.cells or self.tile_size < self.input_size[0]:
            raise ValueError(
                f"tile size {self.tile_size} must be at least the model's input "
                f"({self.input_size[0]}) and a multiple of its {self.cells} map cells"
            )
        self.factor = self.tile_size // self.cells
        self.overlap_cells = int(opts.get("overlap_cells", round(self.cells / 4)))
        self.overlap = self.overlap_cells * self.factor
        self.window = blend_window_2d(
            (self.cells, self.cells), (self.overlap_cells,) * 2, self.window_kind
        )
        self.maps = (MapSpec(method, factor=self.factor, channels=2, fill=0.0),)
        self.extras = {"probabilities": ((self.num_classes,), "float32")}

    def _maps(self, tiles: np.ndarray, target: int, *, stained: bool = False):
        """:class:`TileMaps` of (B, T, T, 3) uint8 tiles (``stained``: stain-normalised)."""
        x = self.spec.images(tiles, stain_normalised=stained)
        x = x.to(next(self.model.parameters()).device)
        if self._cam is None:
            return tile_node_attention(self.model, x, target)
        return tile_cams(self._cam, x, target)

    def settings(self) -> dict[str, Any]:
        return {
            "target_class": self.target_class,
            "tile_size": self.tile_size,
            "overlap_cells": self.overlap_cells,
            "window": self.window_kind,
            "percentile": self.percentile,
            "target_layer": "node attention" if self._cam is None else self._cam.layer_name,
            "stain": None if self.spec.stain is None else self.spec.stain.to_dict(),
        }

    def process(
        self, tiles: np.ndarray, boxes: list[TileBox], prepared: list[dict]
    ) -> list[TileResult]:
        """Raw maps and probabilities of a batch of (B, T, T, 3) uint8 tiles."""
        if self.prepare_tile is not None:
            tm = self._maps(
                np.stack([p["tile"] for p in prepared]), self.target_class, stained=True
            )
        else:
            tm = self._maps(np.asarray(tiles), self.target_class)
        return [
            TileResult(
                maps={self.method: tile_values(tm, k)},
                weights={self.method: self.window},
                extras={"probabilities": tm.probabilities[k]},
            )
            for k in range(len(boxes))
        ]

    def finalize(self, store) -> SlideOutcome:
        """Slide-wide normalisation, DT threshold, seam score and summary (module docstring)."""
        from histoview.explain.base import decide_class

        name = self.method
        shape = [0, 0]

        def raw_blocks():
            for rows, values, weight in store.iter_blocks(name):
                shape[0], shape[1] = rows.stop, values.shape[1]
                yield np.where(weight > 0, values[..., 0], np.nan)

        hist = robust_histogram(raw_blocks, percentile=self.percentile)
        scale = slide_scale(
            hist,
            percentile=self.percentile,
            threshold="otsu" if name == "dt-gradcam" else None,
        )
        done = np.asarray(store.done_indices(), np.int64)
        probs = np.asarray(store.extras("probabilities"))[done].astype(np.float64)
        seam = self._seam(store, scale, tuple(shape))

        def final(values, weight, rows):
            out = np.zeros((*weight.shape, 2), np.float32)
            covered = weight > 0
            out[..., 0] = np.where(covered, scale.normalise(values[..., 0]), 0)
            out[..., 1] = np.where(covered, values[..., 1], 0)
            return out

        array = store.write_final(name, final, channels=2)
        mean = probs.mean(0) if len(probs) else np.full(self.num_classes, np.nan)
        decided, operating = decide_class(mean, self.meta) if len(probs) else (None, None)
        target_p = probs[:, self.target_class] if len(probs) else np.zeros(0)
        tile_calls = probs.argmax(1) if len(probs) else np.zeros(0, int)
        label = self.classes[self.target_class]
        summary = {  # the engine adds method, model, checkpoint hash, tiles and time
            "classes": list(self.classes),
            "target_class": self.target_class,
            "target_class_name": label,
            "probabilities": [float(p) for p in mean],
            "predicted_class": None if decided is None else self.classes[decided],
            "prediction_rule": "the mean of the tiles' class probabilities"
            + ("" if operating is None else f", class 1 at P >= {operating:g}"),
            "tile_probability": {
                "mean": float(target_p.mean()) if len(target_p) else None,
                "max": float(target_p.max()) if len(target_p) else None,
                "fraction_of_tiles_called": float((tile_calls == self.target_class).mean())
                if len(target_p)
                else None,
            },
            "tiles_explained": int(len(done)),
            "map": {
                "channels": [self.title, f"p({label})"],
                "cell_model_px": self.factor,
                "cell_um": self.factor * float(self.ctx.pixel_size_um),
                "tile_cells": self.cells,
                "values": "0: no evidence for the class; 1: the slide's robust maximum "
                f"(p{self.percentile:g} of its tissue cells) or more",
                **self.settings(),
            },
            **scale.to_dict(),
            "seam": seam,
        }
        final_map = FinalMap(
            name,
            array,
            store.map_pixel_size(name),
            store.map_origin_um(),
            (self.title, f"p({label})"),
        )
        return SlideOutcome(summary, [final_map])

    def _seam(self, store, scale: SlideScale, shape: tuple[int, int]) -> dict:
        """Seam score of the normalised map (without DT's threshold, which makes edges)."""
        done = np.asarray(store.done[:], bool)
        grid = CellGrid((self.cells,) * 2, (self.overlap_cells,) * 2, shape, done.shape)
        meter = SeamMeter(grid, done)
        plain = replace(scale, threshold=None)
        for rows, values, weight in store.iter_blocks(self.method):
            meter.add(rows, np.where(weight > 0, plain.normalise(values[..., 0]), np.nan))
        return meter.result()


def stained(tile: np.ndarray, *, stain) -> dict[str, np.ndarray]:
    """``prepare_tile`` of a checkpoint with a stain normaliser: ``{"tile": normalised}``."""
    return {"tile": stain.transform(tile)}
