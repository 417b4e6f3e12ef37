"""Reproduce the tables of the papers behind histoview's methods, ours beside the paper's.

:data:`EXPERIMENTS` holds one :class:`Experiment` per paper table (the papers are
listed with full citations in ``docs/citations.md``): its dataset and task, its
rows (model, data setting, the paper's training options) and the figures the
paper reports, copied from the paper's text (values in %). Experiments are named
``<first author><year>-<table>`` (``patil2019-table4``), or after the method where
the paper's authors are not known to us (``rmcg-table1``); the names of earlier
versions (``seed000-table4`` ...) are still accepted, with a note on stderr
(:data:`OLD_NAMES`).

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
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoview.training.events import drain

LEAK_LABEL = "image-level split: LEAKS PATIENTS"
NOT_AVAILABLE = "not available in this version"
METRIC_NAMES = {  # our metric key -> the papers' column name
    "accuracy": "Acc.", "balanced_accuracy": "Bal. Acc.", "precision_macro": "Prec.",
    "recall_macro": "Recall", "f1_macro": "F1", "roc_auc": "AUC", "sensitivity": "Sens.",
    "iba": "IBA", "gmean": "GMean",
}


@dataclass(frozen=True)
class Row:
    """One row of a paper's table: a model in one data setting."""

    key: str  # unique in its experiment, e.g. "amil-100x"
    label: str  # the paper's name, e.g. "A-MIL"
    model: str  # histoview registry name (may be one this version does not register)
    setting: str  # e.g. "100X", "Bin-All"
    data: dict[str, Any] = field(default_factory=dict)  # task, magnification
    train: dict[str, Any] = field(default_factory=dict)  # TrainOptions
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)  # adapter options
    paper: dict[str, float] = field(default_factory=dict)  # metric -> reported value (%)
    imagenet: bool = False  # the paper started from ImageNet weights


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str  # paper (as cited in docs/citations.md) and table
    layout: str  # dataset layout (training.datasets)
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    fractions: tuple[float, float, float]  # train / validation / test
    protocol: tuple[str, ...]  # what the paper did, and what histoview does differently
    data_note: str = ""
    figures_note: str = ""  # set when the paper's numbers are not in its text

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key.lower():
                return r
        known = ", ".join(r.key for r in self.rows)
        raise KeyError(f"{self.name} has no row {key!r}; rows: {known}")


def _rows(model, label, settings, data, train, paper=None, *, metrics=(), **kw) -> list[Row]:
    """Rows for ``settings``; ``data(setting)`` gives data options, ``paper[i]`` the figures."""
    out = []
    for i, setting in enumerate(settings):
        values = dict(zip(metrics, paper[i])) if paper else {}
        out.append(Row(f"{model}-{setting}".lower(), label, model, setting, data(setting),
                       dict(train), paper=values, **kw))
    return out


MAGS = ("40X", "100X", "200X", "400X")


def _mag(s: str) -> int | None:
    digits = "".join(ch for ch in s if ch.isdigit())
    return int(digits) if digits else None


def _bin(s):
    return {"task": "binary", "magnification": _mag(s)}


_PATIL2019_CNN = {"epochs": 20, "batch_size": 16, "lr": 1e-4, "optimizer": "adam"}
_CSP_TRAIN = {"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4,
            "loss": "focal", "label_smoothing": 0.1, "mixup_alpha": 0.2, "warmup_epochs": 1,
            "schedule": "cosine", "freeze_backbone_epochs": 5, "backbone_lr_scale": 0.1,
            "tta": True}
_RMCG_TRAIN = {"epochs": 30, "batch_size": 16, "lr": 1e-4, "optimizer": "adam", "weight_decay": 1e-4}
_CSP_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "f1_macro", "roc_auc",
                    "sensitivity")
# CSPResNet50-FPN-SE paper, Tables 2-5 (8x TTA on the 15% test split): Acc., Bal. Acc., Prec., F1, AUC, Sens.
_CSP_PAPER = {
    "MC-All": (78.10, 81.40, 74.89, 76.76, 97.72, 81.40),
    "MC-40X": (77.00, 81.50, 74.24, 75.70, 97.03, 81.50),
    "MC-100X": (76.36, 75.43, 73.54, 73.39, 96.81, 75.43),
    "MC-200X": (68.87, 74.55, 65.48, 67.80, 94.63, 74.55),
    "MC-400X": (64.84, 61.47, 62.44, 60.53, 92.91, 61.47),
    "Bin-All": (95.53, 94.70, 94.90, 94.80, 98.53, 96.93),
    "Bin-40X": (95.00, 94.33, 94.08, 94.21, 97.71, 96.12),
    "Bin-100X": (90.42, 90.78, 88.11, 89.20, 96.73, 89.81),
    "Bin-200X": (93.71, 91.58, 93.50, 92.46, 97.30, 97.13),
    "Bin-400X": (90.84, 90.26, 89.16, 89.67, 94.59, 91.89),
}
_RMCG_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        "patil2019-table4", "A-MIL and CNNs on BreakHis per magnification, benign vs malignant",
        "A-MIL (Patil et al., 2019), Table IV", "breakhis", ("accuracy",),
        tuple(_rows("customnet", "customNet", MAGS, _bin, _PATIL2019_CNN | {"lr": 1e-3},
                    [(80.56,), (82.13,), (79.11,), (83.89,)], metrics=("accuracy",))
              + _rows("vgg16", "VGG16 pretrained", MAGS, _bin, _PATIL2019_CNN,
                      [(78.64,), (78.88,), (78.57,), (72.16,)], metrics=("accuracy",),
                      imagenet=True)
              + _rows("resnet18", "ResNet18 pretrained", MAGS, _bin, _PATIL2019_CNN,
                      [(83.6,), (82.58,), (85.11,), (84.23,)], metrics=("accuracy",), imagenet=True)
              + _rows("amil", "A-MIL", MAGS, _bin,
                      {"epochs": 20, "batch_size": 1, "lr": 1e-3, "optimizer": "adam"},
                      [(82.95,), (86.45,), (86.56,), (84.43,)], metrics=("accuracy",),
                      model_kwargs={"patch_size": 28})),
        (0.7, 0.1, 0.2),
        ("Paper: 80% train / 20% validation per magnification, accuracy on the 20%; patients "
         "not mentioned (an image-level split). Here: 70/10/20 train/val/test, the test part "
         "never used for model selection.",
         "A-MIL: bags of 28x28 patches, stride 28 (400 per 700x460 image), batch 1, lr 0.001, "
         "binary cross-entropy, flips and 90/180/270 rotations (Sec. III-C, III-D). Epochs and "
         "optimizer are not stated: histoview uses 20 epochs and Adam.",
         "VGG16 / ResNet18: ImageNet-initialised, trained on random 224x224 crops with heavy "
         "augmentation; customNet: 128x128 input (Table III). Their batch size, lr and epochs "
         "are not stated (histoview: batch 16, Adam, lr 1e-4, customNet 1e-3, 20 epochs); "
         "histoview resizes whole images instead of cropping."),
        data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
    ),
    Experiment(
        "sureka2020-table2", "Nuclei-graph networks on BACH, in situ vs invasive",
        "RSF nuclei-graph networks with attention and occlusion (Sureka et al., 2020), Table II", "bach",
        ("accuracy",),
        tuple(Row(m, label, m, "BACH", {"task": "in_situ_vs_invasive"},
                  {"epochs": 50, "batch_size": 8, "lr": 0.01, "optimizer": "adam"},
                  input={"graph_threshold_um": 42.0, "pixel_size_um": 0.42},
                  paper={"accuracy": acc})
              for m, label, acc in (("rsf", "RSF", 94.0), ("rsf-edge", "RSF + Edge", 92.0),
                                    ("rsf-attention", "RSF + Attention", 90.0))),
        (0.7, 0.15, 0.15),
        ("Paper: about 50 epochs, lr 0.01, Adam, about 300,000 parameters per model (Sec. IV-B); "
         "batch size and split not stated (histoview: batch 8, 70/15/15).",
         "Graphs: nuclei from a U-Net in the paper (histoview: colour deconvolution and "
         "watershed); edges between nuclei closer than 100 px, weight 1 - d/100 (Eq. 1), here "
         "42 um at BACH's 0.42 um/px.",
         "Table II's Gleason column (97% for all three, prostate data) is not reproduced.",
         "BACH file names carry no patient ids: splits are by image."),
        data_note="BACH Photos folder (Normal, Benign, InSitu, Invasive)",
    ),
    Experiment(
        "rmcg-table1", "CNN and GNN baselines and RMCG on Databiox 40X, three IDC grades",
        "RMCG (relation-aware multi-channel attention GCN), Table 1", "folder", _RMCG_METRICS,
        tuple(Row(key, label, key, "40X", {}, _RMCG_TRAIN, paper=dict(zip(_RMCG_METRICS, vals)))
              for key, label, vals in (
                  ("resnet18", "ResNet18", (78.26, 79.34, 78.29, 79.32)),
                  ("alexnet", "AlexNet", (77.35, 78.10, 77.06, 77.35)),
                  ("resnet18-gcn", "ResNet18-GCN", (81.20, 82.72, 80.07, 78.81)),
                  ("ecc", "ECC", (82.11, 83.03, 80.82, 80.28)),
                  ("resnet18-gat", "ResNet18-GAT", (80.42, 81.59, 79.91, 78.09)),
                  ("gcnii", "AlexNet-GCNII", (81.59, 82.16, 81.23, 81.05)),
                  ("rmcg", "RMCG (ours in the paper)", (82.87, 84.12, 82.15, 82.09)))),
        (0.7, 0.15, 0.15),
        ("Paper: Databiox, 922 images of 124 IDC patients, 40X images only, three grades; "
         "augmented by translation and 90/180/270 rotations; cross-entropy plus L2 on the last "
         "layer (Eq. 7). Split, epochs, batch size, lr and optimizer are not stated "
         "(histoview: 70/15/15, 30 epochs, batch 16, Adam, lr 1e-4, weight decay 1e-4).",
         "Table 1 calls the GCNII row 'AlexNet-GCNII', the text 'Resnet-GCNII'.",
         "As printed, RMCG's F1 (84.12) exceeds both its precision (82.15) and recall (82.09), "
         "impossible when the three are averaged alike (per class F1 <= (P + R) / 2).",
         "The paper does not describe its baselines: histoview's GNN rows are RMCG without "
         "multi-channel attention (ResNet18 pixels, the same MI graph, two GCNConv / NNConv / "
         "GATConv / GCN2Conv layers, mean pooling); GCNII uses the ResNet18 trunk."),
        data_note="Databiox has no reader: point at a folder with one sub-folder per grade "
                  "holding the 40X images",
    ),
    Experiment(
        "cspresnet50-fpn-se-tables2-5",
        "CSPResNet50-FPN-SE on BreakHis: subtype/binary x all/per magnification",
        "CSPResNet50-FPN-SE (ICCK Journal of Image Analysis and Processing), Tables 2-5", "breakhis", _CSP_METRICS,
        tuple(Row(f"cspresnet50_fpn_se-{s}".lower(), "CSPResNet50-FPN-SE", "cspresnet50_fpn_se", s,
                  {"task": "subtype" if s.startswith("MC") else "binary", "magnification": _mag(s)},
                  _CSP_TRAIN, paper=dict(zip(_CSP_METRICS, vals)), imagenet=True)
              for s, vals in _CSP_PAPER.items()),
        (0.7, 0.15, 0.15),
        ("Paper: stratified 70/15/15 image-level split (its Sec. 5.1 names the patient leakage); "
         "ImageNet CSPResNet50; two-phase fine-tuning (head with the backbone frozen, then all "
         "layers with layer-wise lr), focal loss with label smoothing, MixUp, warm-up and cosine "
         "decay, mixed precision; 8x TTA and Youden's J threshold at test (Sec. 5).",
         "Epochs, learning rates, batch size and MixUp/focal parameters are not in our copy "
         "(its methods section is missing): histoview uses 20 epochs (5 frozen), AdamW lr 1e-3, "
         "backbone x0.1, batch 32, gamma 2, smoothing 0.1, MixUp 0.2.",
         "Table 6 (inference time, 8.3-8.9 ms) and Table 7 (related work) are not reproduced."),
        data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
    ),
    Experiment(
        "liu2023-breakhis", "DALAResNet50 on BreakHis per magnification, benign vs malignant",
        "DALAResNet50 and DT Grad-CAM (Liu et al., arXiv:2308.13150)", "breakhis",
        ("accuracy", "f1_macro", "iba", "gmean"),
        tuple(_rows("dalaresnet50", "DALAResNet50", MAGS, _bin,
                    {"epochs": 50, "batch_size": 32, "lr": 1e-4, "optimizer": "adam"},
                    imagenet=True)
              + _rows("resnet50", "ResNet50 (baseline)", MAGS, _bin,
                      {"epochs": 50, "batch_size": 32, "lr": 1e-4, "optimizer": "adam"},
                      imagenet=True)),
        (0.7, 0.15, 0.15),
        ("Paper: ImageNet ResNet50 with a lightweight attention module in layer 4, two FC layers "
         "(LeakyReLU, ReLU), dropout 0.25; batch 32, lr 0.0001, 50 epochs; metrics accuracy, "
         "F1, IBA and GMean on BreakHis (also BACH and Mini-DDSM). Optimizer and split are not "
         "stated (histoview: Adam, 70/15/15).",
         "The ResNet50 rows are a baseline for comparison, not a row of the paper."),
        data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
        figures_note="our copy of the paper is a summary without the result tables: no paper "
                     "figures",
    ),
)}


#: Experiment names of earlier versions -> today's; still accepted, with a note.
OLD_NAMES = {
    "seed000-table4": "patil2019-table4",
    "seed001-table2": "sureka2020-table2",
    "seed002-table1": "rmcg-table1",
    "seed003-tables2-5": "cspresnet50-fpn-se-tables2-5",
    "seed004": "liu2023-breakhis",
}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name`` (an old name from :data:`OLD_NAMES` prints a note)."""
    if name in OLD_NAMES:
        print(f"note: experiment {name!r} is now called {OLD_NAMES[name]!r}; the old name "
              "is deprecated", file=sys.stderr)
        name = OLD_NAMES[name]
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}") from None


def _available(model: str) -> bool:
    from histoview.models.registry import list_models

    return model in list_models(include_test=True)


def list_experiments() -> str:
    """One block per experiment: name, source, data, metrics, rows (unavailable ones marked)."""
    lines = []
    for e in EXPERIMENTS.values():
        n_fig = sum(len(r.paper) for r in e.rows)
        lines += [f"{e.name}: {e.title}", f"    source:  {e.source}",
                  f"    data:    {e.layout} ({e.data_note})",
                  f"    metrics: {', '.join(METRIC_NAMES[m] for m in e.metrics)}; paper figures: "
                  + (f"{n_fig} values" if n_fig else e.figures_note or "none")]
        rows = [r.key + ("" if _available(r.model) else f" [{NOT_AVAILABLE}]") for r in e.rows]
        lines.append("    rows:    " + ", ".join(rows))
    return "\n".join(lines)


def describe_experiment(name: str) -> str:
    """The protocol notes and the paper's figures of one experiment."""
    e = get_experiment(name)
    lines = [f"{e.name}: {e.title}", f"source: {e.source}", f"data: {e.layout} ({e.data_note})",
             "protocol:"] + [f"  - {p}" for p in e.protocol]
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
    name: str, data_root: str | os.PathLike, *, out_dir: str | os.PathLike,
    split_by: str = "patient",
    epochs: int | None = None, max_images: int | None = None, rows: Sequence[str] | None = None,
    device: str | None = None, should_stop: Callable[[], bool] | None = None,
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
        res = {"experiment": exp.name, "row": row.key, "label": row.label, "model": row.model,
               "setting": row.setting, "metrics": list(exp.metrics), "paper": dict(row.paper),
               "ours": {}, "split_by": split_by,
               "epochs": _scaled_train(row.train, epochs)["epochs"],
               "max_images": max_images, "notes": [], "status": "ok",
               "reduced": _reduced_label(epochs, max_images)}
        results.append(res)
        yield {"event": "row_start", "row": row.key, "index": i + 1, "rows": len(selected),
               "text": f"[{i + 1}/{len(selected)}] {row.label} {row.setting}{tag}"}
        if not _available(row.model):
            res["status"] = NOT_AVAILABLE
            yield {"event": "row_skipped", "row": row.key,
                   "text": f"{row.key}: {NOT_AVAILABLE}{tag}"}
            continue
        row_dir = out / row.key
        data = {"type": exp.layout, "root": str(root), **{k: v for k, v in row.data.items()
                                                          if v is not None}}
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
        config = {"name": f"{exp.name}-{row.key}", "model": row.model, "model_kwargs": model_kwargs,
                  "data": data, "input": dict(row.input),
                  "split": {"by": split_by, "fractions": list(exp.fractions), "seed": 0},
                  "train": _scaled_train(row.train, epochs)
                  | ({"device": device} if device else {}),
                  "output_dir": str(row_dir)}
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
        res["ours"] = {m: 100 * test[m] for m in exp.metrics
                       if isinstance(test.get(m), float) and not math.isnan(test[m])}
        res["n_test"] = test.get("n", 0)
        res["checkpoint"], res["report"] = str(trained["checkpoint"]), str(trained["report"])
        if not test:
            res["notes"].append("empty test split")
        save_figure(training_curves_figure(trained["history"], title=f"{row.label} {row.setting}"),
                    row_dir / "training_curves.png")
        if test:
            try:
                evaluate_checkpoint(trained["checkpoint"], data, out_dir=row_dir / "evaluation",
                                    tta=config["train"].get("tta", False), device=device)
            except ValueError as exc:
                res["notes"].append(f"no evaluation figures ({exc})")
        yield {"event": "row_done", "row": row.key, "text": _row_summary(res) + tag}
    if results:
        _write_results(out, exp, results)
    return results


def run_experiment(
    name: str, data_root: str | os.PathLike, *, out_dir: str | os.PathLike,
    split_by: str = "patient",
    epochs: int | None = None, max_images: int | None = None, rows: Sequence[str] | None = None,
    progress: Callable[[dict], None] | None = None, device: str | None = None,
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
    gen = iter_run_experiment(name, data_root, out_dir=out_dir, split_by=split_by, epochs=epochs,
                              max_images=max_images, rows=rows, device=device,
                              should_stop=should_stop)
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
        [f"at most {max_images} images per class"] if max_images else [])
    return ", ".join(parts)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _row_summary(res: dict[str, Any]) -> str:
    parts = [f"{METRIC_NAMES[m]} {_fmt(res['ours'].get(m))} (paper {_fmt(res['paper'].get(m))})"
             for m in res["metrics"]]
    return f"{res['row']}: " + ", ".join(parts)


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table ``model | setting | metric | ours | paper | note`` per experiment."""
    blocks = []
    for name in dict.fromkeys(r["experiment"] for r in results):
        exp = EXPERIMENTS.get(name)
        rs = [r for r in results if r["experiment"] == name]
        leak = any(r["split_by"] == "image" for r in rs)
        no_ids = any("no patient ids" in n for r in rs for n in r["notes"])
        split = (LEAK_LABEL if leak else "image-level split (the dataset has no patient ids)"
                 if no_ids else "patient-level split (no patient in two splits)")
        head = [f"{name}: {exp.title if exp else ''} ({exp.source if exp else ''})", split]
        reduced = sorted({r["reduced"] for r in rs if r.get("reduced")})
        if reduced:
            head.append("reduced run (not comparable to the paper): " + "; ".join(reduced))
        table = [("model", "setting", "metric", "ours", "paper", "note")]
        for r in rs:
            note = "; ".join(([LEAK_LABEL] if r["split_by"] == "image" else [])
                             + ([] if r["status"] == "ok" else [r["status"]]) + r["notes"])
            for m in r["metrics"]:
                ours = _fmt(r["ours"].get(m)) if r["status"] == "ok" else "skipped"
                paper = r["paper"].get(m)
                paper = _fmt(paper) if paper is not None else (
                    "not in text" if exp and exp.figures_note else "n/a")
                table.append((r["label"], r["setting"], METRIC_NAMES.get(m, m), ours, paper, note))
        widths = [max(len(t[i]) for t in table) for i in range(5)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(t[:5], widths))
                 + (f" | {t[5]}" if t[5] else "") for t in table]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        tail = [f"({LEAK_LABEL}: figures are optimistic)"] if leak else []
        blocks.append("\n".join(head + lines + tail))
    return "\n\n".join(blocks)


def _write_results(out: Path, exp: Experiment, results: list[dict[str, Any]]) -> None:
    from histoview.io.files import write_text

    write_text(out / "results.json", json.dumps(
        {"experiment": exp.name, "source": exp.source, "protocol": list(exp.protocol),
         "results": results}, indent=2))
    write_text(out / "results.txt", format_table(results) + "\n")
