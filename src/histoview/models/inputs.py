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

**Stain** (:attr:`InputSpec.stain`). A model trained with stain normalisation (a config's
``stain`` section) stores the fitted :class:`~histoview.preprocessing.stain.StainNormaliser`
in its sidecar (``stain_normalisation``); every input above is then made from the image
normalised to that stain first (:meth:`InputSpec.normalise_stain`), in training and at
inference alike. Without one, images are used as they are.

**Pixel size** (:func:`resolve_pixel_size`, the one policy). Only the graph input depends
on the physical scale (the nuclei detector and the edge threshold work in micrometres). The
pixel size used is, in this order: the user's (``--pixel-size``, a widget field: source
``"user"``), the file's calibration when :mod:`histoview.io.image` trusts it (``"file"``),
else an estimate from the image's nuclei (:func:`histoview.preprocessing.scale.estimate_pixel_size`,
``"estimated"``); an unreliable estimate raises :class:`PixelSizeError`, asking for
``--pixel-size``, instead of guessing. Only where no image is at hand (a training cache key)
does it fall back to the model's training pixel size (``"checkpoint-default"``) or
:data:`DEFAULT_PIXEL_SIZE_UM` (``"default"``). Callers record the value and its source.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from histoview.preprocessing.graph import DEFAULT_THRESHOLD_UM

if TYPE_CHECKING:
    import torch

    from histoview.models.registry import ModelConfig
    from histoview.preprocessing.graph import NucleiGraph
    from histoview.preprocessing.nuclei import Nuclei
    from histoview.preprocessing.patches import PatchGrid
    from histoview.preprocessing.stain import StainNormaliser

#: edge threshold of nuclei graphs, micrometres (the one constant every caller uses)
GRAPH_THRESHOLD_UM = DEFAULT_THRESHOLD_UM
#: pixel size assumed without an image, a file value or a checkpoint value (um/px, ~20X)
DEFAULT_PIXEL_SIZE_UM = 0.5
#: where a pixel size came from (:func:`resolve_pixel_size`)
PIXEL_SIZE_SOURCES = ("user", "file", "estimated", "checkpoint-default", "default")


class PixelSizeError(ValueError):
    """No pixel size can be trusted for an image: the user must give one (``--pixel-size``)."""


class PixelSizeChoice(NamedTuple):
    """A pixel size (um/px), where it came from (:data:`PIXEL_SIZE_SOURCES`) and, when it was
    estimated, the :class:`~histoview.preprocessing.scale.PixelSizeEstimate`."""

    pixel_size_um: float
    source: str
    estimate: Any = None

    def describe(self) -> str:
        """One line: ``0.2456 um/px (estimated from the nuclei's size, +-12 %, 380 nuclei)``."""
        what = {
            "user": "given by the user",
            "file": "from the file's calibration",
            "estimated": "estimated from the nuclei's size",
            "checkpoint-default": "the model's training pixel size (the image has none)",
            "default": f"histoview's default {DEFAULT_PIXEL_SIZE_UM} um/px (the image has none)",
        }.get(self.source, self.source)
        est = self.estimate
        if est is not None and est.relative_error is not None:
            what += f", +-{est.relative_error:.0%}, {est.n_nuclei} nuclei"
        return f"{self.pixel_size_um:.4g} um/px ({what})"


def resolve_pixel_size(
    image_pixel_size_um: float | None,
    *,
    source: str | None = None,
    image: np.ndarray | None = None,
    model_pixel_size_um: float | None = None,
) -> PixelSizeChoice:
    """The pixel size to analyse an image at (the module docstring's policy).

    Args:
        image_pixel_size_um: the image's own pixel size (um/px; None: unknown or untrusted).
        source: where it came from, ``"file"`` (default) or ``"user"``.
        image: the (H, W, 3) uint8 image, to estimate the pixel size from when it is unknown.
        model_pixel_size_um: the model's training pixel size, used only without an image.

    Raises:
        PixelSizeError: the pixel size is unknown and the estimate is unreliable; the message
            gives the reason and asks for ``--pixel-size``.
    """
    if image_pixel_size_um:
        value = float(image_pixel_size_um)
        if not (value > 0 and np.isfinite(value)):
            raise PixelSizeError(f"pixel size must be a positive number of um, got {value}")
        return PixelSizeChoice(value, source or "file")
    if image is not None:
        from histoview.preprocessing.scale import estimate_pixel_size

        est = estimate_pixel_size(image)
        if not est.reliable:
            raise PixelSizeError(
                "the image has no trustworthy pixel size and it cannot be estimated reliably: "
                f"{est.reason}. Give it with --pixel-size (micrometres per pixel: about 0.25 "
                "at 40X, 0.5 at 20X)"
            )
        return PixelSizeChoice(float(est.pixel_size_um), "estimated", est)
    if model_pixel_size_um:
        return PixelSizeChoice(float(model_pixel_size_um), "checkpoint-default")
    return PixelSizeChoice(DEFAULT_PIXEL_SIZE_UM, "default")


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
        stain: the fitted stain normaliser applied to every image first (None: none).
        tiled: an image model trained on fields of ``input_size`` pixels at
            ``pixel_size_um`` (a patch classifier, e.g. the IDC weights), not on whole images
            resized: an image larger than that field is classified and explained tile by
            tile (:mod:`histoview.explain.tiled_cam`), never squeezed into one input.
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
    stain: StainNormaliser | None = None
    tiled: bool = False

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        model_kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        stain: StainNormaliser | dict[str, Any] | None = None,
    ) -> InputSpec:
        """The spec of a model about to be trained: its registry config, factory arguments
        and the training config's ``input`` options (``stride``, ``max_background``,
        ``pixel_size_um``, ``graph_threshold_um``); ``stain`` a fitted normaliser or its
        :meth:`~histoview.preprocessing.stain.StainNormaliser.to_dict`."""
        kwargs, opts = dict(model_kwargs or {}), dict(options or {})
        if isinstance(stain, dict):
            from histoview.preprocessing.stain import StainNormaliser

            stain = StainNormaliser.from_dict(stain)
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
            stain=stain,
            tiled=bool(opts.get("tiled", False)) and config.kind == "image",
        )

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], model) -> InputSpec:
        """The spec a trained model was trained with, from its checkpoint sidecar ``meta``
        (sections ``patch``, ``input``, ``pixel_size_um``, ``stain_normalisation``: absent
        in older checkpoints, which then use images as they are) and the built ``model``."""
        config = model.model_config
        patch = dict(meta.get("patch") or {})
        inp = dict(meta.get("input") or {})
        options = {**inp, **patch}
        options.setdefault("pixel_size_um", meta.get("pixel_size_um"))
        kwargs = {"patch_size": getattr(model, "patch_size", None) or patch.get("patch_size")}
        return cls.for_model(config, kwargs, options, stain=meta.get("stain_normalisation"))

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
        if self.tiled:
            out["tiled"] = True
        return out

    # -- the policy for the physical scale ----------------------------------------------------
    def pixel_size(
        self,
        image_pixel_size_um: float | None,
        *,
        source: str | None = None,
        image: np.ndarray | None = None,
    ) -> tuple[float, str]:
        """``(um/px, source)`` for an image: :meth:`resolve_pixel_size` without the estimate."""
        choice = self.resolve_pixel_size(image_pixel_size_um, source=source, image=image)
        return choice.pixel_size_um, choice.source

    def resolve_pixel_size(
        self,
        image_pixel_size_um: float | None,
        *,
        source: str | None = None,
        image: np.ndarray | None = None,
    ) -> PixelSizeChoice:
        """:func:`resolve_pixel_size` with this model's training pixel size as the fallback."""
        return resolve_pixel_size(
            image_pixel_size_um, source=source, image=image, model_pixel_size_um=self.pixel_size_um
        )

    # -- inputs -------------------------------------------------------------------------------
    def normalise_stain(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) or (B, H, W, 3) uint8 with the training stain (:attr:`stain`, each image
        on its own), or ``image`` itself when the model has no stain normaliser.

        Raises:
            StainNormalisationError: an image's stain cannot be estimated (blank, background
                only) and the normaliser was fitted with ``on_no_tissue="raise"``.
        """
        if self.stain is None:
            return image
        arr = np.asarray(image)
        if arr.ndim == 4:
            return np.stack([self.stain.transform(a) for a in arr])
        return self.stain.transform(arr)

    def bag(
        self,
        image: np.ndarray,
        *,
        level: int = 0,
        downsample: float = 1.0,
        image_shape: tuple[int, int] | None = None,
        stain_normalised: bool = False,
    ) -> tuple[torch.Tensor, PatchGrid]:
        """``(patches (N, 3, p, p) float32, grid)`` of an (H, W, 3) uint8 image; ``level``,
        ``downsample`` and ``image_shape`` place the grid in level-0 pixels of a pyramid;
        ``stain_normalised``: the image already went through :meth:`normalise_stain`."""
        from histoview.preprocessing.patches import extract_patches
        from histoview.preprocessing.transforms import to_tensor

        self._expect("bag")
        if not stain_normalised:
            image = self.normalise_stain(image)
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

    def images(self, images: np.ndarray, *, stain_normalised: bool = False) -> torch.Tensor:
        """(B, 3, h, w) float32 of (H, W, 3) or (B, H, W, 3) uint8 images, stain-normalised
        (unless ``stain_normalised``: done already), resized to ``input_size`` and
        normalised."""
        from histoview.preprocessing.transforms import to_tensor

        self._expect("image")
        arr = np.asarray(images)
        if not stain_normalised:
            arr = self.normalise_stain(arr)
        return to_tensor(arr, self.mean, self.std, size=self.input_size)

    def graph(
        self, image: np.ndarray, pixel_size_um: float, *, stain_normalised: bool = False
    ) -> tuple[NucleiGraph, Nuclei]:
        """``(graph, nuclei)`` of an (H, W, 3) uint8 image at ``pixel_size_um`` um/px (give
        :meth:`pixel_size`'s answer, not None), detected on the stain-normalised image
        (unless ``stain_normalised``: done already).

        Made once per image: the last :data:`GRAPHS_KEPT` are remembered by the detection
        image's content, the pixel size and the edge threshold (an explanation, its
        faithfulness curves and "Run all methods" share one detection); nuclei that the
        pixel-size estimator found on the same pixels at this pixel size
        (:func:`histoview.preprocessing.scale.remembered_estimate`) are used, not detected
        again. Both are shared with later callers: read them, do not change them.
        """
        from histoview.preprocessing.graph import build_nuclei_graph

        self._expect("graph")
        if not stain_normalised:
            image = self.normalise_stain(image)
        key = _graph_key(image, pixel_size_um, self.graph_threshold_um)
        with _GRAPHS_LOCK:
            found = _GRAPHS.get(key)
            if found is not None:
                _GRAPHS.move_to_end(key)
                return found
        nuclei = _detected_nuclei(image, pixel_size_um)
        graph = build_nuclei_graph(
            nuclei, threshold_um=self.graph_threshold_um, pixel_size_um=pixel_size_um
        )
        with _GRAPHS_LOCK:
            _GRAPHS[key] = (graph, nuclei)
            while len(_GRAPHS) > GRAPHS_KEPT:
                _GRAPHS.popitem(last=False)
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


#: nuclei graphs remembered by :meth:`InputSpec.graph` (newest last)
GRAPHS_KEPT = 4
_GRAPHS: OrderedDict = OrderedDict()
_GRAPHS_LOCK = threading.Lock()


def _graph_key(image: np.ndarray, pixel_size_um: float, threshold_um: float) -> tuple:
    rgb = np.ascontiguousarray(image)
    digest = hashlib.blake2b(memoryview(rgb).cast("B"), digest_size=16).hexdigest()
    return digest, rgb.shape, rgb.dtype.str, float(pixel_size_um), float(threshold_um)


def _detected_nuclei(image: np.ndarray, pixel_size_um: float) -> Nuclei:
    """The nuclei of ``image`` at ``pixel_size_um`` (default detector settings): those the
    pixel-size estimator's last detector run found, when it ran on these pixels at exactly
    this pixel size, else detected now."""
    from histoview.preprocessing.nuclei import detect_nuclei
    from histoview.preprocessing.scale import remembered_estimate

    est = remembered_estimate(image)
    if est is not None and est.nuclei is not None and est.pixel_size_um == pixel_size_um:
        return est.nuclei
    return detect_nuclei(image, pixel_size_um)


def forget_graphs() -> None:
    """Forget the graphs :meth:`InputSpec.graph` remembers (tests, memory)."""
    with _GRAPHS_LOCK:
        _GRAPHS.clear()
