"""The one input path: how an RGB image and its pixel size become what a model takes.

Training (:mod:`histoview.training.adapters`), explanation (:mod:`histoview.explain.run`
and the method registry) and faithfulness (:mod:`histoview.explain.faithfulness`) all go
through an :class:`InputSpec`, so a model sees the same input wherever it runs:

* ``bag`` (attention-MIL): a grid of square patches (patch size and stride in pixels,
  patches mostly glass dropped), normalised, ``(N, 3, p, p)``;
* ``image`` (CNNs): the whole image resized to the model's input size, normalised,
  ``(B, 3, h, w)``;
* ``graph`` (nuclei graphs): nuclei detected at the image's pixel size and joined when
  closer than ``graph_threshold_um`` micrometres, as a torch-geometric ``Data``.

**Unknown pixel size.** Only the graph input depends on the physical scale (the nuclei
detector and the edge threshold work in micrometres). When the image's pixel size is
unknown, :meth:`InputSpec.pixel_size` assumes the image was taken at the pixel size the
model was trained at (the checkpoint records it), and :data:`DEFAULT_PIXEL_SIZE_UM`
(0.5 um/px, about 20X) when the checkpoint does not say; it returns where the value came
from, and callers record it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from histoview.preprocessing.graph import DEFAULT_THRESHOLD_UM

if TYPE_CHECKING:
    import torch

    from histoview.models.registry import ModelConfig
    from histoview.preprocessing.graph import NucleiGraph
    from histoview.preprocessing.nuclei import Nuclei
    from histoview.preprocessing.patches import PatchGrid

#: edge threshold of nuclei graphs, micrometres (the one constant every caller uses)
GRAPH_THRESHOLD_UM = DEFAULT_THRESHOLD_UM
#: pixel size assumed when neither the image nor the checkpoint gives one (um/px, ~20X)
DEFAULT_PIXEL_SIZE_UM = 0.5
#: where a pixel size came from: the image (or the user), the checkpoint, the default
PIXEL_SIZE_SOURCES = ("image", "checkpoint", "default")


@dataclass(frozen=True)
class InputSpec:
    """What one model takes, and how to make it from an RGB image.

    Attributes:
        kind: ``"bag"``, ``"image"`` or ``"graph"`` (the model's kind).
        mean, std: per-channel normalisation of RGB values in [0, 1] (None: none).
        input_size: (height, width) images are resized to (image models only).
        patch_size, stride, max_background: the patch grid of bag models (pixels, and the
            largest fraction of glass a kept patch may have; None keeps every patch).
        pixel_size_um: the pixel size the model was trained at, if known (um/px).
        graph_threshold_um: nuclei closer than this are joined (graph models).
    """

    kind: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    input_size: tuple[int, int] | None = None
    patch_size: int | None = None
    stride: int | None = None
    max_background: float | None = None
    pixel_size_um: float | None = None
    graph_threshold_um: float = GRAPH_THRESHOLD_UM

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        model_kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> InputSpec:
        """The spec of a model about to be trained: its registry config, factory arguments
        and the training config's ``input`` options (``stride``, ``max_background``,
        ``pixel_size_um``, ``graph_threshold_um``)."""
        kwargs, opts = dict(model_kwargs or {}), dict(options or {})
        patch = stride = None
        if config.kind == "bag":
            patch = int(kwargs.get("patch_size") or (config.input_size or (28, 28))[0])
            stride = int(opts.get("stride") or patch)
        mpp = opts.get("pixel_size_um")
        return cls(
            kind=config.kind,
            mean=tuple(config.mean) if config.mean is not None else None,
            std=tuple(config.std) if config.std is not None else None,
            input_size=tuple(config.input_size) if config.input_size else None,
            patch_size=patch,
            stride=stride,
            max_background=opts.get("max_background") if config.kind == "bag" else None,
            pixel_size_um=float(mpp) if mpp else None,
            graph_threshold_um=float(opts.get("graph_threshold_um", GRAPH_THRESHOLD_UM)),
        )

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], model) -> InputSpec:
        """The spec a trained model was trained with, from its checkpoint sidecar ``meta``
        (sections ``patch``, ``input``, ``pixel_size_um``) and the built ``model``."""
        config = model.model_config
        patch = dict(meta.get("patch") or {})
        inp = dict(meta.get("input") or {})
        options = {**inp, **patch}
        options.setdefault("pixel_size_um", meta.get("pixel_size_um"))
        kwargs = {"patch_size": getattr(model, "patch_size", None) or patch.get("patch_size")}
        return cls.for_model(config, kwargs, options)

    def describe(self) -> dict[str, Any]:
        """The fields that matter for this kind, as stored in a checkpoint's sidecar."""
        keys = {
            "bag": ("patch_size", "stride", "max_background"),
            "image": ("input_size",),
            "graph": ("graph_threshold_um", "pixel_size_um"),
        }[self.kind]
        out = {k: v for k, v in asdict(self).items() if k in keys}
        if out.get("input_size") is not None:
            out["input_size"] = list(out["input_size"])
        return out

    # -- the policy for the physical scale ----------------------------------------------------
    def pixel_size(self, image_pixel_size_um: float | None) -> tuple[float, str]:
        """``(um/px, source)`` to use for an image: its own pixel size when known, else the
        model's training pixel size, else :data:`DEFAULT_PIXEL_SIZE_UM` (module docstring)."""
        if image_pixel_size_um:
            return float(image_pixel_size_um), "image"
        if self.pixel_size_um:
            return float(self.pixel_size_um), "checkpoint"
        return DEFAULT_PIXEL_SIZE_UM, "default"

    # -- inputs -------------------------------------------------------------------------------
    def bag(
        self,
        image: np.ndarray,
        *,
        level: int = 0,
        downsample: float = 1.0,
        image_shape: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, PatchGrid]:
        """``(patches (N, 3, p, p) float32, grid)`` of an (H, W, 3) uint8 image; ``level``,
        ``downsample`` and ``image_shape`` place the grid in level-0 pixels of a pyramid."""
        from histoview.preprocessing.patches import extract_patches
        from histoview.preprocessing.transforms import to_tensor

        self._expect("bag")
        patches, grid = extract_patches(
            np.ascontiguousarray(image),
            self.patch_size,
            self.stride,
            max_background=self.max_background,
            level=level,
            downsample=downsample,
            image_shape=image_shape,
        )
        return to_tensor(patches, self.mean, self.std), grid

    def images(self, images: np.ndarray) -> torch.Tensor:
        """(B, 3, h, w) float32 of (H, W, 3) or (B, H, W, 3) uint8 images, resized to
        ``input_size`` and normalised."""
        from histoview.preprocessing.transforms import to_tensor

        self._expect("image")
        return to_tensor(np.asarray(images), self.mean, self.std, size=self.input_size)

    def graph(self, image: np.ndarray, pixel_size_um: float) -> tuple[NucleiGraph, Nuclei]:
        """``(graph, nuclei)`` of an (H, W, 3) uint8 image at ``pixel_size_um`` um/px (give
        :meth:`pixel_size`'s answer, not None)."""
        from histoview.preprocessing.graph import build_nuclei_graph
        from histoview.preprocessing.nuclei import detect_nuclei

        self._expect("graph")
        nuclei = detect_nuclei(image, pixel_size_um)
        graph = build_nuclei_graph(
            nuclei, threshold_um=self.graph_threshold_um, pixel_size_um=pixel_size_um
        )
        return graph, nuclei

    def model_input(self, image: np.ndarray, pixel_size_um: float | None = None):
        """One (H, W, 3) uint8 image as the model's input: a bag tensor (N, 3, p, p), an image
        tensor (3, h, w) or a torch-geometric ``Data`` (pixel size as :meth:`pixel_size`)."""
        if self.kind == "bag":
            return self.bag(image)[0]
        if self.kind == "image":
            return self.images(image)
        return self.graph(image, self.pixel_size(pixel_size_um)[0])[0].to_pyg()

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError(f"this is a {self.kind!r} model's input spec, not a {kind!r} one")
