"""The experiment tables of the papers behind histoview's methods: what each paper ran and found.

:data:`EXPERIMENTS` holds one :class:`Experiment` per paper table (the papers are
listed with full citations in ``docs/citations.md``): its dataset and task, its
rows (model, data setting, the paper's training options) and the figures the
paper reports, copied from the paper's text (values in %). Experiments are named
``<first author><year>-<table>`` (``patil2019-table4``), or after the method where
the paper's authors are not known to us (``rmcg-table1``); the names of earlier
versions (``seed000-table4`` ...) are still accepted, with a note on stderr
(:data:`OLD_NAMES`, :func:`get_experiment`).

This module is data only; :mod:`histoview.training.reproduce` runs the rows and
prints ours beside the paper's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from histoview.training.recipes import CSP_TRAIN

METRIC_NAMES = {  # our metric key -> the papers' column name
    "accuracy": "Acc.",
    "balanced_accuracy": "Bal. Acc.",
    "precision_macro": "Prec.",
    "recall_macro": "Recall",
    "f1_macro": "F1",
    "roc_auc": "AUC",
    "sensitivity": "Sens.",
    "iba": "IBA",
    "gmean": "GMean",
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
        out.append(
            Row(
                f"{model}-{setting}".lower(),
                label,
                model,
                setting,
                data(setting),
                dict(train),
                paper=values,
                **kw,
            )
        )
    return out


MAGS = ("40X", "100X", "200X", "400X")


def _mag(s: str) -> int | None:
    digits = "".join(ch for ch in s if ch.isdigit())
    return int(digits) if digits else None


def _bin(s):
    return {"task": "binary", "magnification": _mag(s)}


_PATIL2019_CNN = {"epochs": 20, "batch_size": 16, "lr": 1e-4, "optimizer": "adam"}
_RMCG_TRAIN = {
    "epochs": 30,
    "batch_size": 16,
    "lr": 1e-4,
    "optimizer": "adam",
    "weight_decay": 1e-4,
}
_CSP_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "f1_macro",
    "roc_auc",
    "sensitivity",
)
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

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "patil2019-table4",
            "A-MIL and CNNs on BreakHis per magnification, benign vs malignant",
            "A-MIL (Patil et al., 2019), Table IV",
            "breakhis",
            ("accuracy",),
            tuple(
                _rows(
                    "customnet",
                    "customNet",
                    MAGS,
                    _bin,
                    _PATIL2019_CNN | {"lr": 1e-3},
                    [(80.56,), (82.13,), (79.11,), (83.89,)],
                    metrics=("accuracy",),
                )
                + _rows(
                    "vgg16",
                    "VGG16 pretrained",
                    MAGS,
                    _bin,
                    _PATIL2019_CNN,
                    [(78.64,), (78.88,), (78.57,), (72.16,)],
                    metrics=("accuracy",),
                    imagenet=True,
                )
                + _rows(
                    "resnet18",
                    "ResNet18 pretrained",
                    MAGS,
                    _bin,
                    _PATIL2019_CNN,
                    [(83.6,), (82.58,), (85.11,), (84.23,)],
                    metrics=("accuracy",),
                    imagenet=True,
                )
                + _rows(
                    "amil",
                    "A-MIL",
                    MAGS,
                    _bin,
                    {"epochs": 20, "batch_size": 1, "lr": 1e-3, "optimizer": "adam"},
                    [(82.95,), (86.45,), (86.56,), (84.43,)],
                    metrics=("accuracy",),
                    model_kwargs={"patch_size": 28},
                )
            ),
            (0.7, 0.1, 0.2),
            (
                "Paper: 80% train / 20% validation per magnification, accuracy on the 20%; patients "
                "not mentioned (an image-level split). Here: 70/10/20 train/val/test, the test part "
                "never used for model selection.",
                "A-MIL: bags of 28x28 patches, stride 28 (400 per 700x460 image), batch 1, lr 0.001, "
                "binary cross-entropy, flips and 90/180/270 rotations (Sec. III-C, III-D). Epochs and "
                "optimizer are not stated: histoview uses 20 epochs and Adam.",
                "VGG16 / ResNet18: ImageNet-initialised, trained on random 224x224 crops with heavy "
                "augmentation; customNet: 128x128 input (Table III). Their batch size, lr and epochs "
                "are not stated (histoview: batch 16, Adam, lr 1e-4, customNet 1e-3, 20 epochs); "
                "histoview resizes whole images instead of cropping.",
            ),
            data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
        ),
        Experiment(
            "sureka2020-table2",
            "Nuclei-graph networks on BACH, in situ vs invasive",
            "RSF nuclei-graph networks with attention and occlusion (Sureka et al., 2020), Table II",
            "bach",
            ("accuracy",),
            tuple(
                Row(
                    m,
                    label,
                    m,
                    "BACH",
                    {"task": "in_situ_vs_invasive"},
                    {"epochs": 50, "batch_size": 8, "lr": 0.01, "optimizer": "adam"},
                    input={"graph_threshold_um": 42.0, "pixel_size_um": 0.42},
                    paper={"accuracy": acc},
                )
                for m, label, acc in (
                    ("rsf", "RSF", 94.0),
                    ("rsf-edge", "RSF + Edge", 92.0),
                    ("rsf-attention", "RSF + Attention", 90.0),
                )
            ),
            (0.7, 0.15, 0.15),
            (
                "Paper: about 50 epochs, lr 0.01, Adam, about 300,000 parameters per model (Sec. IV-B); "
                "batch size and split not stated (histoview: batch 8, 70/15/15).",
                "Graphs: nuclei from a U-Net in the paper (histoview: colour deconvolution and "
                "watershed); edges between nuclei closer than 100 px, weight 1 - d/100 (Eq. 1), here "
                "42 um at BACH's 0.42 um/px.",
                "Table II's Gleason column (97% for all three, prostate data) is not reproduced.",
                "BACH file names carry no patient ids: splits are by image.",
            ),
            data_note="BACH Photos folder (Normal, Benign, InSitu, Invasive)",
        ),
        Experiment(
            "rmcg-table1",
            "CNN and GNN baselines and RMCG on Databiox 40X, three IDC grades",
            "RMCG (relation-aware multi-channel attention GCN), Table 1",
            "folder",
            _RMCG_METRICS,
            tuple(
                Row(key, label, key, "40X", {}, _RMCG_TRAIN, paper=dict(zip(_RMCG_METRICS, vals)))
                for key, label, vals in (
                    ("resnet18", "ResNet18", (78.26, 79.34, 78.29, 79.32)),
                    ("alexnet", "AlexNet", (77.35, 78.10, 77.06, 77.35)),
                    ("resnet18-gcn", "ResNet18-GCN", (81.20, 82.72, 80.07, 78.81)),
                    ("ecc", "ECC", (82.11, 83.03, 80.82, 80.28)),
                    ("resnet18-gat", "ResNet18-GAT", (80.42, 81.59, 79.91, 78.09)),
                    ("gcnii", "AlexNet-GCNII", (81.59, 82.16, 81.23, 81.05)),
                    ("rmcg", "RMCG (ours in the paper)", (82.87, 84.12, 82.15, 82.09)),
                )
            ),
            (0.7, 0.15, 0.15),
            (
                "Paper: Databiox, 922 images of 124 IDC patients, 40X images only, three grades; "
                "augmented by translation and 90/180/270 rotations; cross-entropy plus L2 on the last "
                "layer (Eq. 7). Split, epochs, batch size, lr and optimizer are not stated "
                "(histoview: 70/15/15, 30 epochs, batch 16, Adam, lr 1e-4, weight decay 1e-4).",
                "Table 1 calls the GCNII row 'AlexNet-GCNII', the text 'Resnet-GCNII'.",
                "As printed, RMCG's F1 (84.12) exceeds both its precision (82.15) and recall (82.09), "
                "impossible when the three are averaged alike (per class F1 <= (P + R) / 2).",
                "The paper does not describe its baselines: histoview's GNN rows are RMCG without "
                "multi-channel attention (ResNet18 pixels, the same MI graph, two GCNConv / NNConv / "
                "GATConv / GCN2Conv layers, mean pooling); GCNII uses the ResNet18 trunk.",
            ),
            data_note="Databiox has no reader: point at a folder with one sub-folder per grade "
            "holding the 40X images",
        ),
        Experiment(
            "cspresnet50-fpn-se-tables2-5",
            "CSPResNet50-FPN-SE on BreakHis: subtype/binary x all/per magnification",
            "CSPResNet50-FPN-SE (ICCK Journal of Image Analysis and Processing), Tables 2-5",
            "breakhis",
            _CSP_METRICS,
            tuple(
                Row(
                    f"cspresnet50_fpn_se-{s}".lower(),
                    "CSPResNet50-FPN-SE",
                    "cspresnet50_fpn_se",
                    s,
                    {
                        "task": "subtype" if s.startswith("MC") else "binary",
                        "magnification": _mag(s),
                    },
                    CSP_TRAIN,
                    paper=dict(zip(_CSP_METRICS, vals)),
                    imagenet=True,
                )
                for s, vals in _CSP_PAPER.items()
            ),
            (0.7, 0.15, 0.15),
            (
                "Paper: stratified 70/15/15 image-level split (its Sec. 5.1 names the patient leakage); "
                "ImageNet CSPResNet50; two-phase fine-tuning (head with the backbone frozen, then all "
                "layers with layer-wise lr), focal loss with label smoothing, MixUp, warm-up and cosine "
                "decay, mixed precision; 8x TTA and Youden's J threshold at test (Sec. 5).",
                "Epochs, learning rates, batch size and MixUp/focal parameters are not in our copy "
                "(its methods section is missing): histoview uses 20 epochs (5 frozen), AdamW lr 1e-3, "
                "backbone x0.1, batch 32, gamma 2, smoothing 0.1, MixUp 0.2.",
                "Table 6 (inference time, 8.3-8.9 ms) and Table 7 (related work) are not reproduced.",
            ),
            data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
        ),
        Experiment(
            "liu2023-breakhis",
            "DALAResNet50 on BreakHis per magnification, benign vs malignant",
            "DALAResNet50 and DT Grad-CAM (Liu et al., arXiv:2308.13150)",
            "breakhis",
            ("accuracy", "f1_macro", "iba", "gmean"),
            tuple(
                _rows(
                    "dalaresnet50",
                    "DALAResNet50",
                    MAGS,
                    _bin,
                    {"epochs": 50, "batch_size": 32, "lr": 1e-4, "optimizer": "adam"},
                    imagenet=True,
                )
                + _rows(
                    "resnet50",
                    "ResNet50 (baseline)",
                    MAGS,
                    _bin,
                    {"epochs": 50, "batch_size": 32, "lr": 1e-4, "optimizer": "adam"},
                    imagenet=True,
                )
            ),
            (0.7, 0.15, 0.15),
            (
                "Paper: ImageNet ResNet50 with a lightweight attention module in layer 4, two FC layers "
                "(LeakyReLU, ReLU), dropout 0.25; batch 32, lr 0.0001, 50 epochs; metrics accuracy, "
                "F1, IBA and GMean on BreakHis (also BACH and Mini-DDSM). Optimizer and split are not "
                "stated (histoview: Adam, 70/15/15).",
                "The ResNet50 rows are a baseline for comparison, not a row of the paper.",
            ),
            data_note="BreakHis folder (the BreaKHis_v1 tree or a flat folder of SOB_*.png)",
            figures_note="our copy of the paper is a summary without the result tables: no paper "
            "figures",
        ),
    )
}


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
        print(
            f"note: experiment {name!r} is now called {OLD_NAMES[name]!r}; the old name "
            "is deprecated",
            file=sys.stderr,
        )
        name = OLD_NAMES[name]
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}") from None
