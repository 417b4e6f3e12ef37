"""Training an A-MIL attention head on cached slide embeddings (CLAM's second stage).

A config with ``data: {type: slide_features, slides, checkpoint, cache}``
(:class:`~histoview.training._schema_features.SlideFeaturesData`) trains only the attention
pooling and the classifier of an A-MIL model; the feature extractor is the ``checkpoint``'s,
frozen, and never runs: each training item is one slide's bag of embeddings from the feature
cache (:mod:`histoview.explain.feature_cache`), as an A-MIL explain of the slide with that
checkpoint stored them (``fill: true`` embeds the slides the cache lacks first).

* :func:`slide_features_dataset`: the CSV (``path``, ``label``, optional ``patient``) as a
  :class:`~histoview.training.datasets.Dataset` of :class:`FeatureSample` s, each naming its
  cache entry; split by patient as every dataset (:func:`~histoview.training.datasets.
  split_dataset`).
* :class:`FeatureBagAdapter`: an item is the (N, F) embeddings of a slide (training: at most
  ``max_patches``, a random subset); the forward is ``model.forward_head`` (pooling + head).
* :func:`iter_train_head` / :func:`train_head`: the run (the training loop, checkpoints and
  resume of :func:`histoview.training.engine.fit`; the test split evaluated at the end). The
  checkpoint is a whole A-MIL checkpoint: the source's extractor weights (bit for bit: the
  same extractor hash, so its slides' cached embeddings serve it), sidecar patch settings and
  pixel size, the new pooling and head; :func:`~histoview.explain.slide_run.explain_slide`
  uses it as any A-MIL checkpoint. One process (no ``--nproc``).

An entry is found by the slide's content hash and the parts that decide the embeddings (the
extractor hash, patch size, ``max_background``, mean/std, stain, the model's pixel size); of
several (other regions, tile layouts, precisions) the most recently created is used.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoview.training.datasets import Dataset, Sample

#: parts of an entry's key that must match the checkpoint's (the others: grid, precision)
MATCH_PARTS = ("extractor", "features", "patch_size", "max_background", "mean", "std")


@dataclass(frozen=True)
class FeatureSample(Sample):
    """A slide whose bag is a feature-cache entry (``entry``: its key); ``path``: the slide."""

    entry: str = ""

    def load(self):
        raise ValueError(
            f"{self.path}: a slide_features sample is a bag of cached embeddings, not an "
            "image; train it with histoview.training.feature_bags.train_head (histoview train "
            "CONFIG)"
        )


def _source(checkpoint: str | os.PathLike):
    """(model, meta, sha256, the key parts the checkpoint decides) of the source checkpoint."""
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_amil import AmilSlideProcessor
    from histoview.explain.slide_processor import SlideContext

    net, meta, sha = load_for_method("amil", checkpoint=checkpoint, device="cpu")
    ctx = SlideContext(pixel_size_um=float(meta.get("pixel_size_um") or 0.0))
    return net, meta, sha, AmilSlideProcessor(net, meta, sha, ctx).feature_parts()


def find_entry(cache, slide_hash: str, parts: dict[str, Any], pixel_size_um: float | None):
    """The newest complete entry of ``cache`` for the slide whose :data:`MATCH_PARTS` and
    stain equal ``parts`` (and the model pixel size, when known), or None."""
    found = []
    for e in cache.list_entries():
        p = e["parts"]
        if e["slide"] != slide_hash or any(p.get(k) != parts[k] for k in MATCH_PARTS):
            continue
        if p.get("stain_normalisation") != parts.get("stain_normalisation"):
            continue
        mpp = p.get("grid", {}).get("pixel_size_um")
        if pixel_size_um and (mpp is None or abs(mpp - pixel_size_um) > 1e-6 * pixel_size_um):
            continue
        found.append(e)
    return max(found, key=lambda e: e["created"])["key"] if found else None


def read_slide_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows ``{"path", "label", "patient"}`` of a slides CSV (paths made absolute against its
    folder; patient None where the column is absent or empty)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: slides table not found") from None
    if not {"path", "label"} <= columns:
        raise ValueError(f"{path}: the slides table needs 'path' and 'label' columns")
    out = []
    for i, row in enumerate(rows, start=2):
        slide, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not slide or not label:
            raise ValueError(f"{path}, line {i}: a slide needs a path and a label")
        p = Path(os.path.expandvars(slide)).expanduser()
        patient = (row.get("patient") or "").strip() or None
        out.append(
            {"path": p if p.is_absolute() else path.parent / p, "label": label, "patient": patient}
        )
    if not out:
        raise ValueError(f"{path}: the slides table lists no slides")
    return out


def slide_features_dataset(
    slides: str | os.PathLike,
    checkpoint: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    fill: bool = False,
    max_patches: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """The :class:`Dataset` of a ``slide_features`` config section (module docstring);
    slides without an entry are embedded first with ``fill`` (the slide engine, outputs
    thrown away), else a ValueError names them."""
    from histoview.explain.feature_cache import FeatureCache
    from histoview.io.content_hash import content_hash

    rows = read_slide_table(slides)
    net, meta, sha, parts = _source(checkpoint)
    store = FeatureCache(cache)
    mpp = meta.get("pixel_size_um")
    labels = sorted({r["label"] for r in rows})
    source_classes = tuple(meta["classes"])
    classes = source_classes if set(labels) <= set(source_classes) else tuple(labels)
    samples, missing = [], []
    for row in rows:
        key = find_entry(store, content_hash(row["path"]), parts, mpp)
        if key is None and fill:
            _embed(row["path"], checkpoint, store, progress)
            key = find_entry(store, content_hash(row["path"]), parts, mpp)
        if key is None:
            missing.append(str(row["path"]))
            continue
        patient = row["patient"]
        samples.append(FeatureSample(classes.index(row["label"]), patient, row["path"], entry=key))
    if missing:
        raise ValueError(
            f"{slides}: {len(missing)} slides have no cached embeddings of {checkpoint} in "
            f"{store.root} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            "explain them with A-MIL and this checkpoint first, or set data.fill: true"
        )
    options = {
        "cache": str(store.root.resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": sha,
        "extractor_sha256": parts["extractor"],
        "max_patches": max_patches,
    }
    has_patients = any(r["patient"] for r in rows)
    return Dataset("slide_features", "slides", classes, samples, str(slides), has_patients, options)


def _embed(slide: Path, checkpoint, cache, progress) -> None:
    """One A-MIL explain of ``slide`` with ``checkpoint`` into ``cache`` (its outputs go)."""
    from histoview.explain.slide_run import explain_slide

    if progress is not None:
        progress(f"embedding {slide} into the feature cache")
    with tempfile.TemporaryDirectory(prefix="histoview-embed-") as out:
        explain_slide(
            slide, "amil", out_dir=out, checkpoint=checkpoint, feature_cache=cache, workers=0
        )


class FeatureBagAdapter:
    """Items of :class:`FeatureSample` s for :func:`~histoview.training.engine.fit`: a
    slide's (N, F) float32 embeddings; forward through the pooling and head only."""

    views = (None,)  # no test-time augmentation of embeddings

    def __init__(self, cache: str | os.PathLike, max_patches: int | None = None):
        from histoview.explain.feature_cache import FeatureCache

        self.cache_root = str(cache)
        self.max_patches = max_patches
        self._cache = FeatureCache(cache)

    def __getstate__(self):
        return {"cache_root": self.cache_root, "max_patches": self.max_patches}

    def __setstate__(self, state):
        self.__init__(state["cache_root"], state["max_patches"])

    def prepare(self, sample: FeatureSample, *, train: bool, rng, view=None):
        import torch

        entry = self._cache.get(sample.entry)
        if entry is None:
            raise ValueError(
                f"{sample.path}: its cached embeddings ({sample.entry}) left the feature cache "
                f"{self._cache.root} during training (evicted or cleared); raise the cache's "
                "bound (HISTOVIEW_FEATURE_CACHE_GB) and run again with data.fill: true"
            )
        h = entry.features
        if train and self.max_patches and len(h) > self.max_patches:
            h = h[np.sort(rng.choice(len(h), self.max_patches, replace=False))]
        return torch.from_numpy(np.array(h, np.float32))  # a copy: the entry is read-only

    def collate(self, items):
        return items  # bags differ in size

    def forward(self, model, batch, device):
        import torch

        return torch.cat([model.forward_head(h.to(device)[None]) for h in batch])

    def describe(self) -> dict[str, Any]:
        return {"features": "cached", "max_patches": self.max_patches}

    def release_memory(self) -> None:
        pass  # nothing kept in memory: entries are memory-mapped per item


def iter_train_head(
    config: dict[str, Any],
    *,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
    source: str = "config",
    base_dir: str | os.PathLike = ".",
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Train the head of a ``slide_features`` config (module docstring); yields the engine's
    events; returns ``{"checkpoint", "report", "test", ...}``. Relative paths of the data
    section are taken against ``base_dir`` (default: the current folder, as for every
    config ``histoview train`` runs)."""
    import torch

    from histoview.models.checkpoint import load_state_dict, save_checkpoint
    from histoview.models.registry import create_model
    from histoview.training.config import validate_config
    from histoview.training.datasets import check_trainable, split_dataset, split_warnings
    from histoview.training.engine import TrainOptions, fit
    from histoview.training.prediction import evaluate
    from histoview.training.schema import ConfigError

    config = validate_config(config, base_dir=base_dir, source=source)
    data = dict(config["data"])
    if data.get("type") != "slide_features":
        raise ConfigError(f"{source}: data.type must be slide_features to train a head")
    for key in ("slides", "checkpoint", "cache"):
        if data.get(key) is not None:
            p = Path(os.path.expandvars(str(data[key]))).expanduser()
            data[key] = str(p if p.is_absolute() else (Path(base_dir) / p).resolve())
    opts = TrainOptions.from_dict(config.get("train", {}))
    messages: list[str] = []
    dataset = slide_features_dataset(**{k: v for k, v in data.items() if k != "type"},
                                     progress=messages.append)  # fmt: skip
    for text in messages:
        yield {"event": "message", "text": text}
    check_trainable(dataset)
    split, (train, val, test) = split_dataset(dataset, config.get("split"))
    if not train:
        raise ValueError("the training split is empty: the slides table is too small")
    warnings = split_warnings(dataset.classes, (train, val, test))
    for text in warnings:
        yield {"event": "message", "text": f"WARNING: {text}", "warning": text}
    src, src_meta, src_sha, _ = _source(data["checkpoint"])
    if src_meta["model"] != config["model"]:
        raise ConfigError(
            f"{source}: model {config['model']!r} differs from the features' checkpoint "
            f"({src_meta['model']!r}, {data['checkpoint']})"
        )
    torch.manual_seed(opts.seed)
    kwargs = dict(src_meta.get("model_kwargs") or {})
    model = create_model(src_meta["model"], num_classes=len(dataset.classes), **kwargs)
    model.backbone.load_state_dict(src.backbone.state_dict())
    model.backbone.requires_grad_(False)  # frozen: never run, kept for the checkpoint
    adapter = FeatureBagAdapter(dataset.options["cache"], dataset.options["max_patches"])
    meta = _head_meta(src_meta, src_sha, dataset, split, (train, val, test), warnings, config)
    result = yield from fit(
        model, adapter, train, val, dataset.classes, opts, config["output_dir"], meta,
        resume=resume, should_stop=should_stop,
    )  # fmt: skip
    if result.get("cancelled"):
        return {**result, "checkpoint": result["last"], "report": None}
    best = Path(result["best"])
    state, best_meta = load_state_dict(best)
    model.load_state_dict(state)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    test_metrics = {}
    if test:
        yield {"event": "message", "text": f"evaluating {best.name} on {len(test)} test slides"}
        m = evaluate(model.to(device), adapter, test, dataset.classes, device=device,
                     threshold=best_meta.get("threshold"))  # fmt: skip
        test_metrics = {k: v for k, v in m.items() if not k.startswith("_")}
    best_meta["metrics"] = {**best_meta.get("metrics", {}), "test": test_metrics}
    for key in ("format", "format_version", "weights_sha256", "created", "code_version"):
        best_meta.pop(key, None)
    save_checkpoint(best, model, best_meta)
    report = {
        "name": config.get("name"),
        "model": config["model"],
        "checkpoint": str(best),
        "features": dataset.options,
        "data": best_meta["data"],
        "best_epoch": best_meta.get("epoch"),
        "validation": best_meta["metrics"].get("validation", {}),
        "test": test_metrics,
        "history": result["history"],
        "warnings": warnings,
    }
    report_path = Path(config["output_dir"]) / "report.json"
    from histoview.io.files import write_text

    text = json.dumps(report, indent=2, default=_plain)
    write_text(report_path, text, overwrite=True)
    return {**result, "checkpoint": best, "report": report_path, "test": test_metrics}


def _head_meta(src_meta, src_sha, dataset, split, parts, warnings, config) -> dict[str, Any]:
    """The new checkpoint's sidecar: the source's model, patch and input settings and pixel
    size (so it explains slides as the source does), the new classes and data."""
    from histoview import SYNTHETIC_NOTICE

    keep = ("model", "model_kwargs", "patch", "input", "pixel_size_um", "normalisation")
    meta = {k: src_meta[k] for k in keep if k in src_meta}
    if "stain_normalisation" in src_meta:
        meta["stain_normalisation"] = src_meta["stain_normalisation"]
    train, val, test = parts
    synthetic = bool(src_meta.get("synthetic"))
    return {
        **meta,
        "classes": list(dataset.classes),
        "data": dataset.summary()
        | {
            "features": dataset.options,
            "split": {
                "by": split["by"],
                "seed": split["seed"],
                "fractions": list(split["fractions"]),
                "train": len(train),
                "val": len(val),
                "test": len(test),
                "leaks_patients": split["by"] == "image" and dataset.has_patients,
                "warnings": warnings,
            },
        },
        "feature_extractor_from": {"checkpoint": dataset.options["checkpoint"], "sha256": src_sha},
        "name": config.get("name"),
        "synthetic": synthetic,
        "notice": SYNTHETIC_NOTICE if synthetic else "Research use only, not for diagnosis.",
    }


def train_head(config: dict[str, Any], **kwargs) -> dict[str, Any]:
    """:func:`iter_train_head` run to the end; its result."""
    gen = iter_train_head(config, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")
