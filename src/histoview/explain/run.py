"""Explain a model's decision on an image file: choose checkpoint and level, run, write outputs.

This is what ``histoview explain`` and the napari widgets call. The methods and what they
need are the records of :mod:`histoview.explain.methods`.

Without ``checkpoint`` the method's bundled synthetic demo weights are used
(and the outputs say so). Pyramidal slides are explained on the level whose
pixel size is closest to (not finer than) the one the model was trained at,
moving to coarser levels until the level fits in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.base import Explanation, write_explanation
from histoview.explain.methods import ExplainContext, get_method, list_methods
from histoview.io.image import MAX_LEVEL_PIXELS
from histoview.models.checkpoint import CheckpointError, sha256_file


def load_for_method(
    method: str,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
):
    """(model, meta, sha256) for ``method``: the given checkpoint, else the newest checkpoint
    of ``model`` in the library, else the method's bundled demo weights."""
    from histoview.models.checkpoint import load_model
    from histoview.models.registry import get_model_config

    spec = get_method(method)
    path = checkpoint_for_method(method, model=model, checkpoint=checkpoint)
    net, meta = load_model(path, device=device, model_name=model)
    config = get_model_config(meta["model"])
    if not spec.accepts(config):
        wanted = f"{spec.kind} model" + (f" with {spec.requires}" if spec.requires else "")
        raise CheckpointError(
            f"{path}: method {method!r} needs a {wanted}, but the checkpoint holds "
            f"{meta['model']!r} ({config.kind})"
        )
    return net, meta, sha256_file(path)


def checkpoint_for_method(
    method: str, *, model: str | None = None, checkpoint: str | os.PathLike | None = None
) -> Path:
    """The checkpoint :func:`load_for_method` loads (its sidecar says the model's pixel size
    before any model is built)."""
    from histoview.models.library import bundled_checkpoint, find_checkpoint, list_checkpoints

    if checkpoint is not None:
        return find_checkpoint(checkpoint)
    if model is not None:
        entries = list_checkpoints(model=model)
        if not entries:
            raise CheckpointError(
                f"no checkpoint for model {model!r}: train one (histoview train) and pass "
                "--checkpoint"
            )
        return entries[0].path
    return bundled_checkpoint(get_method(method).demo_weights, purpose=f"method {method!r}")


def choose_level(src, meta: dict[str, Any]) -> int:
    """The pyramid level to explain: the model's pixel size or finer, small enough to fit."""
    level = src.best_level_for(meta["pixel_size_um"]) if meta.get("pixel_size_um") else 0
    while (
        level < src.n_levels - 1
        and src.levels[level].height * src.levels[level].width > MAX_LEVEL_PIXELS
    ):
        level += 1
    return level


def _class_index(target_class, classes) -> int | None:
    if target_class is None:
        return None
    if isinstance(target_class, str) and not target_class.isdigit():
        if target_class not in classes:
            raise ValueError(
                f"unknown class {target_class!r}; the model's classes are {list(classes)}"
            )
        return list(classes).index(target_class)
    idx = int(target_class)
    if not 0 <= idx < len(classes):
        raise ValueError(f"class index {idx} out of range for classes {list(classes)}")
    return idx


def explain_array(
    image: np.ndarray,
    method: str,
    net,
    meta: dict[str, Any],
    sha: str | None,
    *,
    pixel_size_um: float | None = None,
    target_class=None,
    importance: str | None = None,
    downsample: float = 1.0,
    level: int = 0,
    image_shape: tuple[int, int] | None = None,
    pixel_size_source: str | None = None,
) -> Explanation:
    """Run ``method`` with a loaded model on an (H, W, 3) uint8 image.

    ``pixel_size_um`` is the image's (um/px; None: unknown); ``target_class`` a class name
    or index (None: the predicted class); ``importance`` the graph method's option;
    ``downsample``, ``level`` and ``image_shape`` place the image in a pyramid;
    ``pixel_size_source`` says where ``pixel_size_um`` came from (``"file"``, ``"user"``).
    A blank image (:func:`~histoview.preprocessing.scale.is_blank`) is refused: no method's
    prediction means anything on it. Out-of-distribution warnings (pixel size or stain far
    from the checkpoint's training data, :mod:`histoview.explain.ood`) join
    ``extra["warnings"]``. Every explanation records ``pixel_size_um`` and
    ``pixel_size_source`` in ``extra`` (``"unknown"`` where the method needs none).
    """
    from histoview.explain.ood import ood_warnings
    from histoview.preprocessing.scale import is_blank

    blank = is_blank(image)
    if blank:
        raise ValueError(f"{blank}; no explanation is made of an image without tissue")
    options = {"importance": importance} if importance else {}
    context = ExplainContext(
        pixel_size_um=pixel_size_um,
        pixel_size_source=pixel_size_source,
        target_class=_class_index(target_class, tuple(meta["classes"])),
        options=options,
        downsample=downsample,
        level=level,
        image_shape=image_shape,
    )
    spec = get_method(method)
    expl = spec.explain(image, net, meta, sha, context)
    expl.extra.setdefault("pixel_size_um", pixel_size_um)
    expl.extra.setdefault(
        "pixel_size_source", (pixel_size_source or "file") if pixel_size_um else "unknown"
    )
    # out of distribution (explain.ood): pixel size or stain far from the training data's
    used = expl.extra.get("pixel_size_um") or pixel_size_um
    ood = ood_warnings(meta, image, used, kind=spec.kind)
    if ood:
        expl.extra["warnings"] = [*expl.extra.get("warnings", []), *ood]
    return expl


def pixel_size_line(expl: Explanation) -> str:
    """The line ``histoview explain`` prints: which pixel size a method used, and from where."""
    mpp, source = expl.extra.get("pixel_size_um"), expl.extra.get("pixel_size_source")
    if not mpp:
        return f"{expl.method}: pixel size unknown (this method does not use it)"
    est = expl.extra.get("pixel_size_estimate") or {}
    detail = {
        "estimated": "estimated from the nuclei's size"
        + (f", +-{est['relative_error']:.0%}, {est['n_nuclei']} nuclei" if est else ""),
        "file": "from the file's calibration",
        "user": "given with --pixel-size",
    }.get(source, source)
    return f"{expl.method}: pixel size {mpp:.4g} um/px ({detail})"


def explain_path(
    path: str | os.PathLike,
    methods: tuple[str, ...] | list[str],
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    target_class=None,
    importance: str | None = None,
    pixel_size_um: float | None = None,
    skip_missing: bool = False,
    report=print,
):
    """Explain one image file with one or several methods, all on the same pyramid level.

    Returns ``(rgb, explanations, info)`` where ``info`` has the level, its
    pixel size, the level-0 shape and the methods skipped (with the reason)
    when ``skip_missing`` is set and a method has no weights.
    """
    from dataclasses import replace

    from histoview.io import open_image, to_rgb8

    loaded, skipped = [], {}
    for method in methods:
        try:
            loaded.append((method, *load_for_method(method, model=model, checkpoint=checkpoint)))
        except (CheckpointError, KeyError) as exc:
            if not skip_missing:
                raise
            skipped[method] = str(exc)
            report(f"{method}: skipped ({exc})")
    if not loaded:
        raise CheckpointError(
            f"no method could run on {path}: " + "; ".join(f"{m}: {r}" for m, r in skipped.items())
        )
    with open_image(path, pixel_size_um=pixel_size_um) as src:
        src.check_square_pixels()  # the models assume square pixels
        level = choose_level(src, loaded[0][2])
        rgb = to_rgb8(src.read_level(level))
        ds = src.levels[level].downsample
        mpp = src.level_pixel_size(level)
        mpp_source = src.pixel_size_source
        shape0 = src.shape[:2]
    mpp, mpp_source, estimate = _estimate_if_unknown(rgb, mpp, mpp_source, loaded)
    source = str(Path(path).resolve())
    explanations = [
        replace(
            explain_array(
                rgb,
                method,
                net,
                meta,
                sha,
                pixel_size_um=mpp,
                target_class=target_class,
                importance=importance,
                downsample=ds,
                level=level,
                image_shape=shape0,
                pixel_size_source=mpp_source,
            ),
            source_path=source,
        )
        for method, net, meta, sha in loaded
    ]
    for expl in explanations:
        if estimate is not None and expl.extra.get("pixel_size_source") == "estimated":
            expl.extra.setdefault("pixel_size_estimate", estimate.describe())
        report(pixel_size_line(expl))
        for warning in expl.extra.get("warnings", []):
            report(f"{expl.method}: warning: {warning}")
    info = {
        "level": level,
        "pixel_size_um": mpp,
        "image_shape": shape0,
        "skipped": skipped,
        "models": {m: (net, meta) for m, net, meta, _ in loaded},
    }
    return rgb, explanations, info


def _estimate_if_unknown(rgb, mpp, source, loaded):
    """``(pixel size, source, estimate)`` for an image: the file's or user's, else the estimate
    from its nuclei (:func:`~histoview.models.inputs.resolve_pixel_size`), which every output
    then records. An unreliable estimate stops the run when a method needs the pixel size
    (graphs); other methods go on with it unknown."""
    from histoview.models.inputs import PixelSizeError, resolve_pixel_size
    from histoview.preprocessing.scale import is_blank

    if mpp is not None:
        return mpp, source, None
    blank = is_blank(rgb)
    if blank:
        raise ValueError(f"{blank}; no explanation is made of an image without tissue")
    try:
        choice = resolve_pixel_size(None, image=rgb)
    except PixelSizeError:
        if any(get_method(m).kind == "graph" for m, *_ in loaded):
            raise
        return None, None, None
    return choice.pixel_size_um, choice.source, choice.estimate


def explain_file(
    path: str | os.PathLike,
    *,
    method: str,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    out_dir: str | os.PathLike,
    target_class=None,
    importance: str | None = None,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    report=print,
) -> list[Path]:
    """Explain one image file and write ``<stem>.<method>.json`` / ``.tif`` (and ``.geojson`` for graphs).

    ``method="all"`` runs every method that has weights and also writes
    ``<stem>.compare.png`` (the side-by-side figure with agreement and
    faithfulness) and ``<stem>.report.pdf``. ``<stem>`` is the file name without its image
    suffix (:func:`histoview.io.files.output_stem`: ``case.1.png`` -> ``case.1``); each JSON
    record names the image in ``source_path``. ``out_dir`` is checked for writing before
    any work (:func:`histoview.io.files.check_writable_dir`).
    """
    from histoview.explain.export import export_geojson
    from histoview.io.files import check_writable_dir, output_stem

    out_dir = check_writable_dir(out_dir)
    methods = tuple(list_methods(run_all=True)) if method == "all" else (method,)
    rgb, explanations, info = explain_path(
        path,
        methods,
        model=None if method == "all" else model,
        checkpoint=None if method == "all" else checkpoint,
        target_class=target_class,
        importance=importance,
        pixel_size_um=pixel_size_um,
        skip_missing=method == "all",
        report=report,
    )
    stem = output_stem(path)
    paths: list[Path] = []
    for expl in explanations:
        written = write_explanation(expl, out_dir, stem, overwrite=overwrite)
        paths += [written["json"], written["tif"]]
        if expl.method == "graph":
            gj = out_dir / f"{stem}.graph.geojson"
            paths.append(export_geojson(expl, gj, overwrite=overwrite, numbered=True))
    if method == "all":
        paths += write_comparison(
            rgb, explanations, info, out_dir, stem, image_name=Path(path).name, overwrite=overwrite
        )
    return paths


def write_comparison(
    rgb,
    explanations,
    info,
    out_dir: Path,
    stem: str,
    *,
    image_name: str,
    overwrite: bool = False,
    steps: int = 10,
    paper: str | None = None,
) -> list[Path]:
    """The report (:func:`histoview.explain.report.render_figure`: every method, agreement,
    faithfulness) as ``<stem>.compare.png`` and ``<stem>.report.pdf``, on ``paper`` ("a4" or
    "letter"; default: ``$HISTOVIEW_PAPER``, else the locale's)."""
    from histoview.explain.agreement import agreement_table, method_labels
    from histoview.explain.faithfulness import deletion_insertion
    from histoview.explain.methods import predictor_for
    from histoview.explain.report import render_figure, save_pdf, save_png

    agreement = agreement_table(explanations) if len(explanations) > 1 else None
    faithfulness = {}
    for label, expl in zip(method_labels(explanations), explanations):
        net, meta = info["models"][expl.method]
        mpp = expl.extra.get("pixel_size_um") or info["pixel_size_um"]  # the one it used
        predict = predictor_for(expl.method, net, meta, pixel_size_um=mpp)
        faithfulness[label] = deletion_insertion(expl, predict, rgb, steps=steps)
    fig = render_figure(
        rgb,
        explanations,
        pixel_size_um=info["pixel_size_um"],
        image_name=image_name,
        agreement=agreement,
        faithfulness=faithfulness,
        paper=paper,
    )
    png = save_png(fig, out_dir / f"{stem}.compare.png", overwrite=overwrite, numbered=True)
    pdf = save_pdf(fig, out_dir / f"{stem}.report.pdf", overwrite=overwrite, numbered=True)
    return [png, pdf]
