"""Evaluate a trained checkpoint on a dataset: metrics as JSON and CSV, and figures.

:func:`evaluate_checkpoint` loads a checkpoint, finds the images (a dataset spec
as in :mod:`histoview.training.datasets`, or a folder whose layout is
detected), predicts with the engine and the model's input adapter, and
writes into ``out_dir``:

* ``metrics.json``: the full metric set overall and per class (accuracy,
  balanced accuracy, precision, recall/sensitivity, specificity, F1, ROC AUC,
  PR AUC, IBA and GMean as Liu et al.'s DALAResNet50 paper reports them), the confusion matrix, the
  checkpoint's SHA-256, the data summary and the decision threshold;
* ``metrics.csv``: one row per class and an overall (macro) row;
* ``predictions.csv``: one row per image (true class, predicted class, probabilities);
* ``confusion_matrix.png`` (counts and row-normalised, as Fig. 6 of the CSPResNet50-FPN-SE
  paper),
  ``roc.png`` and ``pr.png`` (one-vs-rest for multi-class tasks).

Binary tasks use the checkpoint's Youden threshold chosen on validation data
(CSPResNet50-FPN-SE paper, Sec. 5), multi-class tasks the arg-max. Nothing is overwritten:
an existing file gets a numbered sibling (``metrics-1.json``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from histoview.training.datasets import Dataset
from histoview.training.evaluation_outputs import write_evaluation
from histoview.training.events import drain

#: split fractions tried, in order, when a checkpoint does not record its own.
COMMON_FRACTIONS = (
    (0.7, 0.15, 0.15),
    (0.6, 0.2, 0.2),
    (0.8, 0.1, 0.1),
    (0.5, 0.25, 0.25),
    (0.7, 0.1, 0.2),
    (0.8, 0.0, 0.2),
)
OVERALL_KEYS = {  # metrics.json name -> classification_metrics name (macro averages)
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "precision": "precision_macro",
    "recall": "recall_macro",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "f1": "f1_macro",
    "roc_auc": "roc_auc",
    "pr_auc": "pr_auc",
    "iba": "iba",
    "gmean": "gmean",
}
RESEARCH_NOTICE = "Research use only, not for diagnosis."


def summarise_metrics(metrics: dict[str, Any], *, alpha: float = 0.1) -> dict[str, Any]:
    """``{"overall": {...}, "per_class": {...}}`` from :func:`classification_metrics` output.

    Overall values are macro averages (binary sensitivity, specificity, ROC/PR
    AUC and IBA are those of the positive class, index 1). Per class, IBA and
    GMean are one-vs-rest: ``(1 + alpha (rec - spec)) rec spec`` and ``sqrt(rec spec)``.
    """
    overall = {"n": metrics["n"], **{k: metrics[v] for k, v in OVERALL_KEYS.items()}}
    per_class = {}
    for name, pc in metrics["per_class"].items():
        rec, spec = pc["recall"], pc["specificity"]
        per_class[name] = {
            **pc,
            "iba": (1 + alpha * (rec - spec)) * rec * spec,
            "gmean": math.sqrt(max(rec * spec, 0.0)),
        }
    return {"overall": overall, "per_class": per_class}


def dataset_for_checkpoint(
    data: str | os.PathLike | dict[str, Any], meta: dict[str, Any]
) -> Dataset:
    """Discover ``data`` with classes that match the checkpoint's (``meta["classes"]``).

    A path means ``{"root": path}`` with the layout detected; when the layout
    is the one the checkpoint was trained on, its task (and single
    magnification) are used, otherwise the layout's tasks are tried in turn.
    Raises ValueError naming both class lists when none matches.
    """
    from histoview.training.datasets import TASKS, detect_layout, discover_dataset

    classes = tuple(meta["classes"])
    if isinstance(data, dict):
        candidates = [dict(data)]
    else:
        root = Path(data).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"{root}: dataset folder not found")
        layout = detect_layout(root)
        trained = meta.get("data") or {}
        candidates = []
        if trained.get("layout") == layout and layout != "folder":
            spec = {"type": layout, "root": str(root), "task": trained.get("task")}
            mags = trained.get("magnifications") or {}
            if layout == "breakhis" and len(mags) == 1:
                spec["magnification"] = next(iter(mags)).rstrip("X")
            if layout == "idc":  # regions (A-MIL bags) as in training
                spec |= {k: trained[k] for k in ("bag_cells", "bag_stride") if trained.get(k)}
            candidates.append(spec)
        tasks = TASKS[layout] if layout != "folder" else (None,)
        candidates += [
            {"type": layout, "root": str(root), **({"task": t} if t else {})} for t in tasks
        ]
    first = None
    for spec in candidates:
        dataset = discover_dataset(spec)
        first = first or dataset
        if set(dataset.classes) == set(classes):
            return dataset
    raise ValueError(
        f"the dataset's classes {list(first.classes)} ({first.layout}, task "
        f"{first.task!r}) differ from the checkpoint's classes {list(classes)}"
    )


def align_classes(dataset: Dataset, classes: tuple[str, ...]) -> Dataset:
    """The dataset with labels re-indexed into ``classes``' order (the model's outputs)."""
    if tuple(dataset.classes) == tuple(classes):
        return dataset
    index = {c: i for i, c in enumerate(classes)}
    mapping = [index[c] for c in dataset.classes]
    return replace(
        dataset,
        classes=tuple(classes),
        samples=[replace(s, label=mapping[s.label]) for s in dataset.samples],
    )


def training_test_split(dataset: Dataset, meta: dict[str, Any]) -> list:
    """Rebuild the test split the checkpoint was trained with, or raise ValueError.

    The data must be the training data (same images per class); the split's
    seed, grouping and sizes come from the checkpoint. An IDC split (design
    ``idc-within-patient``, :mod:`histoview.training.idc_split`) records its patients: the
    test split is their images. Fractions are read from
    the checkpoint when recorded, else found among :data:`COMMON_FRACTIONS` and
    the recorded sizes' own ratio by matching the train/val/test sizes.
    """
    from histoview.training.datasets import split_samples

    trained = meta.get("data") or {}
    split = trained.get("split") or {}
    if not split or "test" not in split:
        raise ValueError("the checkpoint records no training split: evaluate with split='all'")
    now = dataset.summary()
    per_class = trained.get("images_per_class")
    if trained.get("images") != now["images"] or per_class not in (None, now["images_per_class"]):
        raise ValueError(
            f"the checkpoint was trained on {trained.get('images')} images "
            f"{trained.get('images_per_class')} from {trained.get('root')}; this data has "
            f"{now['images']} images {now['images_per_class']}: its test split cannot be rebuilt "
            "here. Evaluate an external dataset with split='all'."
        )
    target = (split["train"], split["val"], split["test"])
    if target[2] == 0:
        raise ValueError("the checkpoint's training run had no test split: use split='all'")
    if split.get("design") == "idc-within-patient":  # training.idc_split: patients recorded
        test_patients = set((split.get("patients") or {}).get("test") or ())
        test = [s for s in dataset.samples if str(s.patient) in test_patients]
        if len(test) != target[2]:
            raise ValueError(
                f"the checkpoint's test patients ({', '.join(sorted(test_patients))}) have "
                f"{len(test)} images here, {target[2]} in training: use split='all'"
            )
        return test
    candidates = [tuple(split["fractions"])] if split.get("fractions") else []
    candidates += [*COMMON_FRACTIONS, tuple(t / sum(target) for t in target)]
    for fractions in candidates:
        parts = split_samples(
            dataset.samples, fractions, seed=split.get("seed", 0), by=split.get("by", "patient")
        )
        if tuple(len(p) for p in parts) == target:
            return parts[2]
    raise ValueError(
        f"cannot rebuild the training split (sizes {target}) on this data: use split='all'"
    )


def iter_evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | dict[str, Any],
    *,
    out_dir: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Generator form of :func:`evaluate_checkpoint`: yields progress events, returns the result.

    Events: ``{"event": "start"|"step"|"message"|"cancelled"|"done", "text": ...}``; ``step``
    carries ``step``, ``steps``, ``elapsed`` and ``eta`` (seconds).
    """
    from histoview import SYNTHETIC_NOTICE
    from histoview.io.files import check_writable_dir
    from histoview.models.checkpoint import default_device, load_model, sha256_file
    from histoview.models.library import find_checkpoint
    from histoview.models.registry import get_model_config
    from histoview.training.adapters import make_adapter
    from histoview.training.metrics import classification_metrics
    from histoview.training.prediction import predict

    if split not in ("test", "all"):
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    check_writable_dir(out_dir)  # before the work, not after it
    path = find_checkpoint(checkpoint)
    device = device or default_device()
    model, meta = load_model(path, device=device)
    classes = tuple(meta["classes"])
    dataset = dataset_for_checkpoint(data, meta)
    samples = training_test_split(dataset, meta) if split == "test" else list(dataset.samples)
    dataset = align_classes(replace(dataset, samples=samples), classes)
    samples = dataset.samples
    if not samples:
        raise ValueError("no images to evaluate")
    mcfg = get_model_config(meta["model"])
    input_opts = dict(meta.get("input") or {})
    if cache_dir is not None:
        input_opts["cache_dir"] = str(cache_dir)
    stain = meta.get("stain_normalisation")  # applied as in training (None: images as they are)
    adapter = make_adapter(mcfg, meta.get("model_kwargs", {}), input_opts, stain=stain)
    threshold = meta.get("threshold") if len(classes) == 2 else None
    yield {
        "event": "start",
        "steps": len(samples),
        "device": device,
        "text": f"evaluating {path.name} ({meta['model']}) on {len(samples)} images "
        f"({split} split) on {device}",
    }
    chunk, parts, t0 = 8, [], time.monotonic()
    for i in range(0, len(samples), chunk):
        if should_stop is not None and should_stop():
            yield {"event": "cancelled", "text": "evaluation cancelled; nothing written"}
            return {"cancelled": True}
        parts.append(
            predict(
                model, adapter, samples[i : i + chunk], device=device, tta=tta, batch_size=chunk
            )
        )
        done, elapsed = min(i + chunk, len(samples)), time.monotonic() - t0
        yield {
            "event": "step",
            "step": done,
            "steps": len(samples),
            "elapsed": elapsed,
            "eta": elapsed / done * (len(samples) - done),
        }
    probs = np.concatenate(parts)
    y = np.array([s.label for s in samples])
    metrics = classification_metrics(y, probs, classes, threshold=threshold)
    trained = meta.get("data") or {}
    leaks = bool((trained.get("split") or {}).get("leaks_patients"))
    warnings = []
    if split == "test" and leaks:
        warnings.append(
            "image-level split: LEAKS PATIENTS (test images share patients with "
            "training images; figures are optimistic)"
        )
    same_data = (trained.get("images"), trained.get("root")) == (len(samples), dataset.root)
    if split == "all" and same_data:
        warnings.append("split='all' on the training data includes the training images: optimistic")
    result = {
        "notice": SYNTHETIC_NOTICE if meta.get("synthetic") else RESEARCH_NOTICE,
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path),
        "model": meta["model"],
        "classes": list(classes),
        "split": split,
        "tta": bool(tta),
        "threshold": threshold,
        "device": device,
        "data": dataset.summary() | {"evaluated": len(samples), "split": split},
        "trained_on": {k: trained.get(k) for k in ("layout", "task", "root", "images", "split")},
        "warnings": warnings,
        **summarise_metrics(metrics),
        "confusion_matrix": metrics["confusion_matrix"],
        "metrics": metrics,
    }
    for text in warnings:
        yield {"event": "message", "text": f"WARNING: {text}"}
    files = write_evaluation(out_dir, result, y, probs, samples)
    yield {"event": "done", "text": f"wrote {len(files)} files to {out_dir}", "files": files}
    # The arrays behind the figures, for callers that draw them (e.g. the napari dock).
    return result | {"files": files, "y_true": y, "probabilities": probs}


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | dict[str, Any],
    *,
    out_dir: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    device: str | None = None,
    progress: Callable[[dict], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a path or a model-library name) on ``data``.

    Args:
        checkpoint: ``.safetensors`` file with its ``.json`` sidecar, or a library name.
        data: a dataset spec (``{"type": "breakhis", "root": ..., "task": "binary"}``)
            or a folder (layout detected; see :func:`dataset_for_checkpoint`).
        out_dir: where the metrics and figures go (created; nothing overwritten); a folder
            that cannot be written is refused before anything runs.
        split: ``"test"`` rebuilds the checkpoint's own test split (the data must be
            its training data); ``"all"`` evaluates every image (external data).
        tta: average the eight dihedral views (the CSPResNet50-FPN-SE paper's 8x TTA).
        device: default CUDA when present, else CPU.
        cache_dir: graph models: where nuclei graphs are cached on disk (e.g. the
            training run's ``graph_cache``); default: built in memory.
        progress: receives each event of :func:`iter_evaluate_checkpoint`.

    Returns:
        The content of ``metrics.json`` plus ``"files"``: name -> path written.

    Raises:
        ValueError: the data's classes differ from the checkpoint's, or the test
            split cannot be rebuilt on this data; ``out_dir`` cannot be written
            (:class:`histoview.io.files.OutputDirError`).
    """
    gen = iter_evaluate_checkpoint(
        checkpoint,
        data,
        out_dir=out_dir,
        split=split,
        tta=tta,
        device=device,
        cache_dir=cache_dir,
        should_stop=should_stop,
    )
    return drain(gen, progress)
