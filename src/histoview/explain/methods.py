"""The explanation methods: one record each, the only list of them in histoview.

The CLI's choices, the explanation widgets (their method list, titles and model filters),
"Run all methods" and the compare view, faithfulness and the report all read
:data:`METHODS` through :func:`get_method` / :func:`list_methods`. Adding a method is one
:class:`Method` record and its explain function::

    register_method(Method(name="my-cam", title="My CAM", kind="image",
                           explain=explain_my_cam, colormap="turbo"))

An explain function takes ``(image, model, meta, checkpoint_sha256, context)``: the
(H, W, 3) uint8 image the model sees, the loaded model, its checkpoint sidecar, the weights'
hash and an :class:`ExplainContext` (pixel size, class to explain, options, where the image
sits in a pyramid), and returns an :class:`~histoview.explain.base.Explanation`.
Citations: ``docs/citations.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histoview.explain.base import Explanation
from histoview.explain.faithfulness import Predict, model_predictor

ExplainFn = Callable[[np.ndarray, Any, dict, "str | None", "ExplainContext"], Explanation]
#: a nuclei graph with fewer nodes than this gets a visible warning
FEW_NUCLEI = 10


@dataclass(frozen=True)
class ExplainContext:
    """Everything an explain function needs besides the image and the model.

    Attributes:
        pixel_size_um: micrometres per pixel of the image passed (None: unknown).
        pixel_size_source: where it came from, ``"file"`` or ``"user"`` (None: the file).
        target_class: class index to explain (None: the predicted class).
        options: method options chosen by the user (e.g. ``{"importance": "occlusion"}``).
        downsample, level, image_shape: where the image sits in a pyramid (level-0 shape).
    """

    pixel_size_um: float | None = None
    pixel_size_source: str | None = None
    target_class: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    downsample: float = 1.0
    level: int = 0
    image_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        name: the name users type (``histoview explain --method NAME``).
        title: the name shown in the viewer, figures and reports.
        kind: the model kind it explains (``"bag"``, ``"image"``, ``"graph"``).
        explain: the explain function (module docstring).
        requires: the built-in explanation a model must have (``ModelConfig.explanation``,
            e.g. ``"node_attention"``); None: every model of ``kind``.
        demo_weights: the bundled synthetic checkpoint used when none is chosen.
        colormap: napari/matplotlib colormap of its overlay.
        thresholded: the map is thresholded (zero below a threshold it chooses).
        class_specific: the explanation depends on the class explained (A-MIL attention
            does not: the widgets hide the class choice).
        run_all: "Run all methods" and ``--method all`` include it.
        options: option name -> allowed values (first = default) shown by the widgets.
        values: what its values mean (0 and the maximum), for legends and docs.
        citation: the paper it comes from (the key finds it in ``docs/citations.md``).
        predictor: builds ``predict(images) -> probabilities`` for faithfulness.
        slide: the processor factory of the slide engine
            (:mod:`histoview.explain.slide_processor`): ``(model, meta, sha, SlideContext)
            -> SlideProcessor``; None: the method does not run on whole slides.
    """

    name: str
    title: str
    kind: str
    explain: ExplainFn
    requires: str | None = None
    demo_weights: str | None = None
    colormap: str = "inferno"
    thresholded: bool = False
    class_specific: bool = True
    run_all: bool = True
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values: str = ""
    citation: str = ""
    predictor: Callable[..., Predict] = model_predictor
    slide: Callable[..., Any] | None = None

    def accepts(self, config) -> bool:
        """Whether a model (its registry :class:`~histoview.models.registry.ModelConfig`)
        can be explained by this method."""
        return config.kind == self.kind and self.requires in (None, config.explanation)


# -- the built-in methods' explain functions -----------------------------------------------------
def _explain_amil(image, model, meta, sha, ctx: ExplainContext) -> Explanation:
    from histoview.explain.amil import explain_amil

    return explain_amil(
        model,
        image,
        meta=meta,
        checkpoint_sha256=sha,
        downsample=ctx.downsample,
        level=ctx.level,
        image_shape=ctx.image_shape,
    )


def _slide_amil(model, meta, sha, ctx):
    from histoview.explain.slide_amil import amil_slide_processor

    return amil_slide_processor(model, meta, sha, ctx)


def _slide_graph(model, meta, sha, ctx):
    from histoview.explain.slide_graph_processor import graph_slide_processor

    return graph_slide_processor(model, meta, sha, ctx)


def _explain_graph(image, model, meta, sha, ctx: ExplainContext) -> Explanation:
    from histoview.explain.graph import explain_graph
    from histoview.models.inputs import InputSpec

    spec = InputSpec.from_checkpoint(meta, model)
    # unknown pixel size: estimated from the image, or PixelSizeError asking for --pixel-size
    choice = spec.resolve_pixel_size(ctx.pixel_size_um, source=ctx.pixel_size_source, image=image)
    mpp, source = choice.pixel_size_um, choice.source
    est = choice.estimate
    if est is None and source == "estimated":  # estimated by the caller (histoview explain)
        from histoview.preprocessing.scale import remembered_estimate

        est = remembered_estimate(image)
    if est is not None and est.nuclei is not None and est.pixel_size_um == mpp:
        # the estimator's last detector run found these nuclei at this pixel size already
        from histoview.preprocessing.graph import build_nuclei_graph

        nuclei = est.nuclei
        graph = build_nuclei_graph(nuclei, threshold_um=spec.graph_threshold_um, pixel_size_um=mpp)
    else:
        graph, nuclei = spec.graph(image, mpp)
    if len(nuclei) == 0:
        raise ValueError(
            f"no nuclei found at {choice.describe()}: the image may be blank or not H&E, or its "
            "pixel size wrong (give the right one with --pixel-size); no prediction is made "
            "from an empty graph"
        )
    warnings = []
    if len(nuclei) < FEW_NUCLEI:
        warnings.append(
            f"only {len(nuclei)} nuclei found at {mpp:.4g} um/px ({source}): the prediction "
            "rests on very little tissue; check the image and its pixel size"
        )
    importance = ctx.options.get("importance") or "auto"
    if importance == "auto":
        importance = "attention" if model.model_config.explanation == "attention" else "occlusion"
    expl = explain_graph(
        model,
        graph,
        importance=importance,
        target_class=ctx.target_class,
        classes=tuple(meta["classes"]),
        checkpoint_sha256=sha,
        synthetic=bool(meta.get("synthetic")),
        image_shape=image.shape[:2],
        outlines=nuclei.outlines,
    )
    expl.extra.update(pixel_size_um=mpp, pixel_size_source=source, importance=importance)
    if choice.estimate is not None:
        expl.extra["pixel_size_estimate"] = choice.estimate.describe()
    if warnings:
        expl.extra["warnings"] = [*expl.extra.get("warnings", []), *warnings]
    return expl


def _cam(method: str) -> ExplainFn:
    def explain(image, model, meta, sha, ctx: ExplainContext) -> Explanation:
        # a patch classifier (input.tiled) on an image larger than its field: tile by tile
        from histoview.explain.tiled_cam import explain_image_cnn

        return explain_image_cnn(
            model,
            image,
            method=method,
            pixel_size_um=ctx.pixel_size_um,
            target_class=ctx.target_class,
            checkpoint_meta=meta,
            checkpoint_sha256=sha,
        )

    return explain


def _explain_rmcg(image, model, meta, sha, ctx: ExplainContext) -> Explanation:
    from histoview.explain.rmcg import explain_rmcg

    return explain_rmcg(
        model, image, target_class=ctx.target_class, checkpoint_meta=meta, checkpoint_sha256=sha
    )


def _cam_slide(method: str) -> Callable[..., Any]:
    def slide(model, meta, sha, ctx):
        from histoview.explain.slide_cam_processor import CAMSlideProcessor

        return CAMSlideProcessor(method, model, meta, sha, ctx, title=method_title(method))

    return slide


_CAM_VALUES = "0: no evidence for the class; 1: the strongest evidence in the image"
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS`; a name can be registered once."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


for _method in (
    Method(
        name="amil",
        title="A-MIL attention",
        kind="bag",
        explain=_explain_amil,
        slide=_slide_amil,
        demo_weights="amil-phantom",
        colormap="inferno",
        class_specific=False,
        values="attention weight of each patch (the weights sum to 1: 1/N each when the model "
        "attends to all N patches alike)",
        citation="A-MIL: Ilse et al., 2018; Patil et al., 2019 (keys Ilse2018, Patil2019)",
    ),
    Method(
        name="graph",
        title="Nuclei importance",
        kind="graph",
        explain=_explain_graph,
        slide=_slide_graph,
        demo_weights="rsf-attention-phantom",
        colormap="magma",
        options={"importance": ("auto", "attention", "occlusion")},
        values="per-nucleus attention, or the drop in the class probability when the nucleus "
        "and its k-hop neighbours are removed (occlusion)",
        citation="Sureka et al., 2020, Sec. III-F, Eq. 5 (key Sureka2020)",
    ),
    Method(
        name="gradcam",
        title="Grad-CAM",
        kind="image",
        explain=_cam("gradcam"),
        slide=_cam_slide("gradcam"),
        demo_weights="customnet-phantom",
        colormap="turbo",
        values=_CAM_VALUES,
        citation="Selvaraju et al., 2017 (key Selvaraju2017)",
    ),
    Method(
        name="dt-gradcam",
        title="DT Grad-CAM",
        kind="image",
        explain=_cam("dt-gradcam"),
        slide=_cam_slide("dt-gradcam"),
        demo_weights="customnet-phantom",
        colormap="turbo",
        thresholded=True,
        values=_CAM_VALUES + "; zero below the dynamic (Otsu) threshold",
        citation="Liu et al., arXiv:2308.13150, 2023 (key Liu2023)",
    ),
    Method(
        name="gradcam++",
        title="Grad-CAM++",
        kind="image",
        explain=_cam("gradcam++"),
        slide=_cam_slide("gradcam++"),
        demo_weights="customnet-phantom",
        colormap="turbo",
        run_all=False,  # the same model and idea as Grad-CAM
        values=_CAM_VALUES,
        citation="Chattopadhay et al., 2018 (key Chattopadhay2018)",
    ),
    Method(
        name="rmcg",
        title="RMCG node attention",
        kind="image",
        explain=_explain_rmcg,
        slide=_cam_slide("rmcg"),
        requires="node_attention",
        demo_weights="rmcg-phantom",
        colormap="viridis",
        values="attention of each pixel-graph node (relative to the largest)",
        citation="RMCG, Eq. 7 (key RMCG)",
    ),
):
    register_method(_method)


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; ValueError names the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def list_methods(*, run_all: bool | None = None) -> list[str]:
    """Method names in registry order (``run_all=True``: those "Run all methods" includes)."""
    return [n for n, m in METHODS.items() if run_all is None or m.run_all == run_all]


def method_title(name: str) -> str:
    """The display title of a method name (the name itself for unknown ones)."""
    method = METHODS.get(name)
    return method.title if method else name


def predictor_for(name: str, model, meta: dict | None = None, **kwargs) -> Predict:
    """The faithfulness ``predict`` callable of method ``name`` for a loaded model
    (keyword arguments: ``pixel_size_um``, ``batch_size``)."""
    return get_method(name).predictor(model, meta, **kwargs)
