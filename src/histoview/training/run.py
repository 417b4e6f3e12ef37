"""Run a training config end to end: data, split, model, loop, test metrics, report."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from histoview import SYNTHETIC_NOTICE
from histoview.io.files import write_text
from histoview.training.config import check_processes, validate_config
from histoview.training.distributed import SINGLE, DistContext
from histoview.training.events import drain


def iter_train_from_config(
    config: dict[str, Any],
    *,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
    source: str = "config",
    dist: DistContext = SINGLE,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Generator version of :func:`train_from_config` (yields the engine's progress events).

    ``config`` is checked against the schema first (:func:`~histoview.training.config.
    validate_config`; ConfigError, a ValueError, names the key), so a typo or an impossible
    value stops the run before any data is read or anything is written; messages start
    with ``source`` (the config file's name).

    ``dist``: this process's place when several train together
    (:mod:`histoview.training.distributed`): each computes the split from the config and
    all check they computed the same one; the test split is evaluated in shares too; only
    rank 0 writes the checkpoints and the report.
    """

    from histoview.models.checkpoint import default_device, load_state_dict, save_checkpoint
    from histoview.models.registry import create_model, get_model_config
    from histoview.training.adapters import make_adapter
    from histoview.training.datasets import (
        check_trainable,
        discover_dataset,
        split_dataset,
        split_warnings,
    )
    from histoview.training.distributed import evaluate_split, split_fingerprint
    from histoview.training.engine import TrainOptions, fit
    from histoview.training.stain_fit import fit_stain_normaliser

    if (config.get("data") or {}).get("type") == "slide_features":  # an A-MIL head
        from histoview.training.feature_bags import iter_train_head

        check_processes(config, dist.world_size, source)
        return (yield from iter_train_head(config, resume=resume, should_stop=should_stop,
                                           source=source))  # fmt: skip
    config = validate_config(config, source=source)  # (absolute paths stay as they are)
    opts = TrainOptions.from_dict(config.get("train", {}))
    dataset = discover_dataset(config["data"])
    check_trainable(dataset)  # one class: refuse before anything is built
    split, (train, val, test) = split_dataset(dataset, config.get("split"))
    dist.check_same(split_fingerprint(train, val, test), "the train/validation/test split")
    if split["by"] == "patient" and not dataset.has_patients:
        yield {
            "event": "message",
            "text": f"{dataset.layout} has no patient ids: splitting by image",
        }
    if not train:
        raise ValueError("the training split is empty: the dataset is too small")
    warnings = split_warnings(dataset.classes, (train, val, test))
    for text in warnings:
        yield {"event": "message", "text": f"WARNING: {text}", "warning": text}
    mcfg = get_model_config(config["model"])
    model_kwargs = {**mcfg.defaults, **config.get("model_kwargs", {})}
    import torch

    torch.manual_seed(opts.seed)  # the same config initialises the same weights, in any process
    try:
        model = create_model(config["model"], num_classes=len(dataset.classes), **model_kwargs)
    except TypeError as exc:  # an unknown model_kwargs key: name it, not the factory's call
        from histoview.training._schema_messages import model_kwargs_problem
        from histoview.training.schema import ConfigError

        if (problem := model_kwargs_problem(exc, config["model"])) is None:
            raise
        raise ConfigError(f"{source}: {problem}") from None
    input_opts = dict(config.get("input", {}))
    # stain normalisation: fitted now (training split or reference image), stored in the sidecar
    stain = fit_stain_normaliser(config.get("stain"), train, source=source)
    if stain is not None:
        yield {"event": "message", "text": stain.describe()}
    hed_jitter = float((config.get("augment") or {}).get("hed_jitter", 0.0))
    adapter = make_adapter(mcfg, model_kwargs, input_opts, stain=stain, hed_jitter=hed_jitter)
    synthetic = dataset.layout == "phantom"
    leak = split["by"] == "image" and dataset.has_patients
    # ImageNet weights only initialise training; the checkpoint holds all weights.
    stored_kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained"}
    meta = {
        "model": config["model"],
        "model_kwargs": stored_kwargs,
        "classes": list(dataset.classes),
        "patch": adapter.describe() if mcfg.kind == "bag" else None,
        "input": adapter.describe(),
        "pixel_size_um": _training_pixel_size(dataset, input_opts),
        "normalisation": {"mean": list(mcfg.mean), "std": list(mcfg.std)},
        **({"stain_normalisation": stain.to_dict()} if stain is not None else {}),
        "data": dataset.summary()
        | {
            "split": {
                "by": split["by"],
                "seed": split["seed"],
                "fractions": list(split["fractions"]),
                "train": len(train),
                "val": len(val),
                "test": len(test),
                "leaks_patients": leak,
                "warnings": warnings,
                # IDC: the split's design and its patients (training.idc_split)
                **{
                    k: split[k]
                    for k in ("design", "patients", "test_patients", "val_patients")
                    if split.get(k) is not None
                },
            }
        },
        "name": config.get("name"),
        "synthetic": synthetic,
        "notice": SYNTHETIC_NOTICE if synthetic else "Research use only, not for diagnosis.",
    }
    if leak:
        yield {
            "event": "message",
            "text": "WARNING: image-level split leaks patients across train/val/test",
        }
    if hasattr(model, "set_node_normalisation"):
        yield from _fit_node_normalisation(model, adapter, train, opts.num_workers)
    result = yield from fit(
        model,
        adapter,
        train,
        val,
        dataset.classes,
        opts,
        config["output_dir"],
        meta,
        resume=resume,
        should_stop=should_stop,
        dist=dist,
    )
    out_dir = Path(config["output_dir"])
    if result.get("cancelled"):
        return {**result, "checkpoint": result["last"], "report": None}
    best = Path(result["best"])
    state, best_meta = load_state_dict(best)
    model.load_state_dict(state)
    device = dist.device if dist.enabled else (opts.device or default_device())
    test_metrics = {}
    if test:
        yield {"event": "message", "text": f"evaluating {best.name} on {len(test)} test images"}
        m = evaluate_split(
            model,
            adapter,
            test,
            dataset.classes,
            device=device,
            dist=dist,
            tta=opts.tta,
            threshold=best_meta.get("threshold"),
            num_workers=opts.num_workers,
        )
        test_metrics = {k: v for k, v in m.items() if not k.startswith("_")}
    best_meta["metrics"] = {**best_meta.get("metrics", {}), "test": test_metrics}
    for key in ("format", "format_version", "weights_sha256", "created", "code_version"):
        best_meta.pop(key, None)
    # the weights are the ones just loaded, so their file gets the same bytes: a kill
    # between this save's two files leaves the old sidecar matching them
    if dist.is_main:
        save_checkpoint(best, model, best_meta)
    report = {
        "name": config.get("name"),
        "model": config["model"],
        "checkpoint": str(best),
        "data": best_meta["data"],
        "best_epoch": best_meta.get("epoch"),
        "threshold": best_meta.get("threshold"),
        "validation": best_meta["metrics"].get("validation", {}),
        "test": test_metrics,
        "history": result["history"],
        "synthetic": synthetic,
        "warnings": warnings,
    }
    report_path = out_dir / "report.json"
    if dist.is_main:
        write_text(report_path, json.dumps(report, indent=2, default=_np_default), overwrite=True)
        _write_history_csv(out_dir / "history.csv", result["history"])
    dist.barrier()  # (the others end when rank 0 has written all)
    return {**result, "checkpoint": best, "report": report_path, "test": test_metrics}


def _fit_node_normalisation(
    model, adapter, train, num_workers: int = 0
) -> Generator[dict[str, Any], None, None]:
    """Graph models standardise node features with training-set statistics (saved as buffers).

    Building the training graphs here (in ``num_workers`` data-loader workers) also fills
    the graph cache before the first epoch.
    """
    import numpy as np

    feats = []
    for i, graph in enumerate(adapter.build_graphs(train, num_workers=num_workers)):
        feats.append(graph.node_features)
        if (i + 1) % 10 == 0 or i + 1 == len(train):
            yield {"event": "message", "text": f"nuclei graphs built: {i + 1}/{len(train)}"}
    x = np.concatenate([f for f in feats if len(f)]) if feats else np.zeros((0, 1))
    if len(x):
        model.set_node_normalisation(x.mean(0), x.std(0))


def train_from_config(
    config: dict[str, Any],
    *,
    resume: bool = True,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    source: str = "config",
) -> dict[str, Any]:
    """Train as ``config`` says; ``progress`` receives each event. Returns checkpoint and report paths."""
    gen = iter_train_from_config(config, resume=resume, should_stop=should_stop, source=source)
    return drain(gen, progress)


def _training_pixel_size(dataset, input_opts) -> float | None:
    if dataset.layout == "phantom":
        from histoview.preprocessing.phantom import PHANTOM_PRESETS

        return PHANTOM_PRESETS[dataset.options["preset"]]["pixel_size_um"]
    # IDC: the layout's assumed 2.5X pixel size (an estimate, preprocessing.idc) by default
    return input_opts.get("pixel_size_um") or dataset.options.get("pixel_size_um")


def _np_default(obj):
    import numpy as np

    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _write_history_csv(path: Path, history: list[dict]) -> None:
    keys = [
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "roc_auc",
        "pr_auc",
        "sensitivity",
        "specificity",
    ]
    lines = ["epoch,train_loss,lr," + ",".join(f"val_{k}" for k in keys)]
    for h in history:
        vals = [h["val"].get(k, "") for k in keys]
        lines.append(
            f"{h['epoch']},{h['train_loss']:.6f},{h['lr']:.3g},"
            + ",".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in vals)
        )
    write_text(path, "\n".join(lines) + "\n", overwrite=True)
