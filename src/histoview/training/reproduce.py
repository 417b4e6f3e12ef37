"""Reproduce the tables of the papers behind histoview's methods, ours beside the paper's.

The tables themselves (:data:`~histoview.training.experiments.EXPERIMENTS`: one
:class:`~histoview.training.experiments.Experiment` per paper table, its rows, the
paper's training options and figures, and the old names) are data in
:mod:`histoview.training.experiments`; this module lists, describes and runs them.

:func:`run_experiment` trains every row with
:func:`~histoview.training.run.train_from_config`, evaluates its test split and
returns the rows with our figures beside the paper's; :func:`format_table`
prints them.

Splits are by patient by default. The papers split by image (the CSPResNet50-FPN-SE
paper says so, Sec. 5.1; Patil et al., 2019 split "80% for training and 20% for
validation at each magnification"), which lets one patient's images sit on both
sides; ``split_by="image"`` reproduces that, and everything it produces is
labelled "image-level split: LEAKS PATIENTS". Our figures are therefore not
expected to match the papers' exactly.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from histoview.training.events import drain
from histoview.training.experiments import (
    EXPERIMENTS,
    METRIC_NAMES,
    Experiment,
    get_experiment,
)

LEAK_LABEL = "image-level split: LEAKS PATIENTS"
NOT_AVAILABLE = "not available in this version"


def _available(model: str) -> bool:
    from histoview.models.registry import list_models

    return model in list_models(include_test=True)


def list_experiments() -> str:
    """One block per experiment: name, source, data, metrics, rows (unavailable ones marked)."""
    lines = []
    for e in EXPERIMENTS.values():
        n_fig = sum(len(r.paper) for r in e.rows)
        lines += [
            f"{e.name}: {e.title}",
            f"    source:  {e.source}",
            f"    data:    {e.layout} ({e.data_note})",
            f"    metrics: {', '.join(METRIC_NAMES[m] for m in e.metrics)}; paper figures: "
            + (f"{n_fig} values" if n_fig else e.figures_note or "none"),
        ]
        rows = [r.key + ("" if _available(r.model) else f" [{NOT_AVAILABLE}]") for r in e.rows]
        lines.append("    rows:    " + ", ".join(rows))
    return "\n".join(lines)


def describe_experiment(name: str) -> str:
    """The protocol notes and the paper's figures of one experiment."""
    e = get_experiment(name)
    lines = [
        f"{e.name}: {e.title}",
        f"source: {e.source}",
        f"data: {e.layout} ({e.data_note})",
        "protocol:",
    ] + [f"  - {p}" for p in e.protocol]
    if e.figures_note:
        lines.append(f"  - paper figures: {e.figures_note}")
    return "\n".join(lines)


def _scaled_train(train: dict[str, Any], epochs: int | None) -> dict[str, Any]:
    """Training options with ``epochs`` overridden; frozen and warm-up epochs scaled to match."""
    train = dict(train)
    if epochs is None:
        return train
    orig = train.get("epochs", epochs)
    for key in ("freeze_backbone_epochs", "warmup_epochs"):
        if train.get(key):
            scaled = train[key] * epochs / orig
            train[key] = int(round(scaled)) if key == "freeze_backbone_epochs" else scaled
    train["epochs"] = epochs
    return train


def _subset_root(dataset, max_images: int, dest: Path) -> Path:
    """Link at most ``max_images`` images per class into ``dest`` (same relative paths).

    Images are taken round-robin over the class's patients (in a seeded order),
    so a reduced run keeps as many patients as it can.
    """
    import shutil
    from collections import defaultdict

    import numpy as np

    root = Path(dataset.root)
    rng = np.random.default_rng(0)
    chosen = []
    for label in range(len(dataset.classes)):
        groups = defaultdict(list)
        for s in dataset.samples:
            if s.label == label:
                groups[s.patient or s.key].append(s)
        keys = sorted(groups)
        rng.shuffle(keys)
        queues = [sorted(groups[k], key=lambda s: s.key) for k in keys]
        picked = []
        while len(picked) < max_images and any(queues):
            for q in queues:
                if q and len(picked) < max_images:
                    picked.append(q.pop(0))
        chosen += picked
    for s in chosen:
        target = dest / Path(s.path).relative_to(root)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(Path(s.path).resolve(), target)
        except OSError:  # no symlinks (e.g. Windows without developer mode)
            shutil.copy2(s.path, target)
    return dest


def iter_run_experiment(
    name: str,
    data_root: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    split_by: str = "patient",
    epochs: int | None = None,
    max_images: int | None = None,
    rows: Sequence[str] | None = None,
    device: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict[str, Any], None, list[dict[str, Any]]]:
    """Generator form of :func:`run_experiment`: yields the rows' progress events."""
    from histoview.io.files import check_writable_dir
    from histoview.training.datasets import discover_dataset
    from histoview.training.evaluate import evaluate_checkpoint
    from histoview.training.figures import save_figure, training_curves_figure
    from histoview.training.run import iter_train_from_config

    exp = get_experiment(name)
    check_writable_dir(Path(out_dir).expanduser())  # before any row trains
    root = Path(data_root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: data root for {exp.name} not found ({exp.data_note})")
    if split_by not in ("patient", "image"):
        raise ValueError(f"split_by must be 'patient' or 'image', got {split_by!r}")
    selected = [exp.row(k) for k in rows] if rows is not None else list(exp.rows)
    out = Path(out_dir).expanduser().resolve()
    tag = f" [{LEAK_LABEL}]" if split_by == "image" else ""
    results = []
    for i, row in enumerate(selected):
        res = {
            "experiment": exp.name,
            "row": row.key,
            "label": row.label,
            "model": row.model,
            "setting": row.setting,
            "metrics": list(exp.metrics),
            "paper": dict(row.paper),
            "ours": {},
            "split_by": split_by,
            "epochs": _scaled_train(row.train, epochs)["epochs"],
            "max_images": max_images,
            "notes": [],
            "status": "ok",
            "reduced": _reduced_label(epochs, max_images),
        }
        results.append(res)
        yield {
            "event": "row_start",
            "row": row.key,
            "index": i + 1,
            "rows": len(selected),
            "text": f"[{i + 1}/{len(selected)}] {row.label} {row.setting}{tag}",
        }
        if not _available(row.model):
            res["status"] = NOT_AVAILABLE
            yield {
                "event": "row_skipped",
                "row": row.key,
                "text": f"{row.key}: {NOT_AVAILABLE}{tag}",
            }
            continue
        row_dir = out / row.key
        data = {
            "type": exp.layout,
            "root": str(root),
            **{k: v for k, v in row.data.items() if v is not None},
        }
        try:
            dataset = discover_dataset(data)
            if max_images:
                subset = _subset_root(dataset, max_images, row_dir / f"data-{max_images}")
                data["root"] = str(subset)
                dataset = discover_dataset(data)
        except ValueError as exc:
            res["status"] = f"error: {exc}"
            yield {"event": "row_skipped", "row": row.key, "text": f"{row.key}: {exc}{tag}"}
            continue
        res["leaks_patients"] = split_by == "image" and dataset.has_patients
        if not dataset.has_patients:
            res["notes"].append("no patient ids: split by image")
        model_kwargs = dict(row.model_kwargs)
        if row.imagenet:
            if _imagenet_available(row.model):
                model_kwargs["pretrained"] = True
            else:
                res["notes"].append("ImageNet weights not available offline: random init")
        config = {
            "name": f"{exp.name}-{row.key}",
            "model": row.model,
            "model_kwargs": model_kwargs,
            "data": data,
            "input": dict(row.input),
            "split": {"by": split_by, "fractions": list(exp.fractions), "seed": 0},
            "train": _scaled_train(row.train, epochs) | ({"device": device} if device else {}),
            "output_dir": str(row_dir),
        }
        trained = None
        try:
            gen = iter_train_from_config(config, should_stop=should_stop)
            while True:
                event = next(gen)
                extra = {"row": row.key} | ({"split_label": LEAK_LABEL} if tag else {})
                if "text" in event:
                    extra["text"] = f"[{row.key}] {event['text']}{tag}"
                yield event | extra
        except StopIteration as stop:
            trained = stop.value
        except ValueError as exc:  # data too small for a split, and the like
            res["status"] = f"error: {exc}"
            yield {"event": "row_skipped", "row": row.key, "text": f"{row.key}: {exc}{tag}"}
            continue
        if trained.get("cancelled"):
            res["status"] = "cancelled"
            yield {"event": "cancelled", "row": row.key, "text": f"cancelled in {row.key}{tag}"}
            break
        test = trained.get("test") or {}
        res["ours"] = {
            m: 100 * test[m]
            for m in exp.metrics
            if isinstance(test.get(m), float) and not math.isnan(test[m])
        }
        res["n_test"] = test.get("n", 0)
        res["checkpoint"], res["report"] = str(trained["checkpoint"]), str(trained["report"])
        if not test:
            res["notes"].append("empty test split")
        save_figure(
            training_curves_figure(trained["history"], title=f"{row.label} {row.setting}"),
            row_dir / "training_curves.png",
        )
        if test:
            try:
                evaluate_checkpoint(
                    trained["checkpoint"],
                    data,
                    out_dir=row_dir / "evaluation",
                    tta=config["train"].get("tta", False),
                    device=device,
                )
            except ValueError as exc:
                res["notes"].append(f"no evaluation figures ({exc})")
        yield {"event": "row_done", "row": row.key, "text": _row_summary(res) + tag}
    if results:
        _write_results(out, exp, results)
    return results


def run_experiment(
    name: str,
    data_root: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    split_by: str = "patient",
    epochs: int | None = None,
    max_images: int | None = None,
    rows: Sequence[str] | None = None,
    progress: Callable[[dict], None] | None = None,
    device: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Train and test the rows of experiment ``name``; returns them with ours beside the paper's.

    Args:
        name: a key of :data:`EXPERIMENTS` (KeyError lists them) or an old name of
            :data:`OLD_NAMES`.
        data_root: the dataset folder (FileNotFoundError when absent).
        out_dir: each row trains in ``out_dir/<row key>``; a rerun resumes finished epochs.
            ``results.json`` and ``results.txt`` are written beside (never overwritten). A
            folder that cannot be written is refused before any row runs.
        split_by: ``"patient"`` (default) or ``"image"`` (as the papers; labelled as leaking).
        epochs: override every row's epochs (reduced runs; frozen/warm-up epochs scale along).
        max_images: reduced runs: at most this many images per class, chosen deterministically.
        rows: row keys to run (default all); rows whose model histoview does not
            register are reported as "not available in this version".
        progress: receives every event (training events carry ``row``).

    Returns:
        One dict per row: ``row``, ``label``, ``model``, ``setting``, ``status``, ``ours``
        and ``paper`` (metric -> %), ``metrics``, ``split_by``, ``notes``, paths.
    """
    gen = iter_run_experiment(
        name,
        data_root,
        out_dir=out_dir,
        split_by=split_by,
        epochs=epochs,
        max_images=max_images,
        rows=rows,
        device=device,
        should_stop=should_stop,
    )
    return drain(gen, progress)


@functools.cache
def _imagenet_available(model: str) -> bool:
    from histoview.models.registry import create_model

    try:
        create_model(model, pretrained=True)
    except (RuntimeError, FileNotFoundError, TypeError, ValueError):
        return False
    return True


def _reduced_label(epochs: int | None, max_images: int | None) -> str:
    parts = ([f"{epochs} epoch{'' if epochs == 1 else 's'}"] if epochs is not None else []) + (
        [f"at most {max_images} images per class"] if max_images else []
    )
    return ", ".join(parts)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _row_summary(res: dict[str, Any]) -> str:
    parts = [
        f"{METRIC_NAMES[m]} {_fmt(res['ours'].get(m))} (paper {_fmt(res['paper'].get(m))})"
        for m in res["metrics"]
    ]
    return f"{res['row']}: " + ", ".join(parts)


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table ``model | setting | metric | ours | paper | note`` per experiment."""
    blocks = []
    for name in dict.fromkeys(r["experiment"] for r in results):
        exp = EXPERIMENTS.get(name)
        rs = [r for r in results if r["experiment"] == name]
        leak = any(r["split_by"] == "image" for r in rs)
        no_ids = any("no patient ids" in n for r in rs for n in r["notes"])
        split = (
            LEAK_LABEL
            if leak
            else "image-level split (the dataset has no patient ids)"
            if no_ids
            else "patient-level split (no patient in two splits)"
        )
        head = [f"{name}: {exp.title if exp else ''} ({exp.source if exp else ''})", split]
        reduced = sorted({r["reduced"] for r in rs if r.get("reduced")})
        if reduced:
            head.append("reduced run (not comparable to the paper): " + "; ".join(reduced))
        table = [("model", "setting", "metric", "ours", "paper", "note")]
        for r in rs:
            note = "; ".join(
                ([LEAK_LABEL] if r["split_by"] == "image" else [])
                + ([] if r["status"] == "ok" else [r["status"]])
                + r["notes"]
            )
            for m in r["metrics"]:
                ours = _fmt(r["ours"].get(m)) if r["status"] == "ok" else "skipped"
                paper = r["paper"].get(m)
                paper = (
                    _fmt(paper)
                    if paper is not None
                    else ("not in text" if exp and exp.figures_note else "n/a")
                )
                table.append((r["label"], r["setting"], METRIC_NAMES.get(m, m), ours, paper, note))
        widths = [max(len(t[i]) for t in table) for i in range(5)]
        lines = [
            " | ".join(c.ljust(w) for c, w in zip(t[:5], widths)) + (f" | {t[5]}" if t[5] else "")
            for t in table
        ]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        tail = [f"({LEAK_LABEL}: figures are optimistic)"] if leak else []
        blocks.append("\n".join(head + lines + tail))
    return "\n\n".join(blocks)


def _write_results(out: Path, exp: Experiment, results: list[dict[str, Any]]) -> None:
    from histoview.io.files import write_text

    write_text(
        out / "results.json",
        json.dumps(
            {
                "experiment": exp.name,
                "source": exp.source,
                "protocol": list(exp.protocol),
                "results": results,
            },
            indent=2,
        ),
    )
    write_text(out / "results.txt", format_table(results) + "\n")
