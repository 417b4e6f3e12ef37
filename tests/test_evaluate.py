"""Evaluating a checkpoint: metrics JSON/CSV, figures, no overwriting, class checks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from histoview.training.evaluate import evaluate_checkpoint, training_test_split
from histoview.training.figures import (
    confusion_matrix_figure,
    pr_figure,
    roc_figure,
    save_figure,
    training_curves_figure,
)
from histoview.training.run import train_from_config

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "iba",
    "gmean",
)


def _noise_folder(root, classes, n=6, shape=(56, 56)):
    rng = np.random.default_rng(0)
    for cls, colour in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 12, (*shape, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch A-MIL checkpoint on two classes of coloured noise."""
    tmp = tmp_path_factory.mktemp("evaluate")
    data = _noise_folder(tmp / "data", {"dark": (90, 40, 120), "pale": (230, 200, 220)})
    config = {
        "name": "tiny",
        "model": "amil",
        "data": {"type": "folder", "root": str(data)},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.002, "device": "cpu"},
        "output_dir": str(tmp / "run"),
    }
    result = train_from_config(config)
    return tmp, data, result["checkpoint"]


def _is_picture(path):
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 5  # not blank


def test_evaluate_writes_metrics_csv_and_figures(trained):
    tmp, data, ckpt = trained
    events = []
    out = tmp / "eval"
    result = evaluate_checkpoint(
        ckpt, str(data), out_dir=out, split="all", device="cpu", progress=events.append
    )
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    assert any(e["event"] == "step" for e in events)
    files = result["files"]
    for key in ("metrics_json", "metrics_csv", "confusion_matrix_png", "roc_png", "pr_png"):
        assert files[key].exists() and files[key].parent == out
    saved = json.loads(files["metrics_json"].read_text())
    assert set(METRICS) <= set(saved["overall"])
    assert saved["checkpoint_sha256"] and len(saved["checkpoint_sha256"]) == 64
    assert saved["data"]["evaluated"] == 12 and saved["classes"] == ["dark", "pale"]
    assert np.sum(saved["confusion_matrix"]) == saved["data"]["evaluated"]
    assert "threshold" in saved and set(saved["per_class"]) == {"dark", "pale"}
    assert {"iba", "gmean", "roc_auc"} <= set(saved["per_class"]["pale"])
    with files["metrics_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["dark", "pale", "overall"]
    assert rows[-1]["support"] == "12" and float(rows[-1]["accuracy"]) == pytest.approx(
        saved["overall"]["accuracy"], abs=1e-6
    )
    for key in ("confusion_matrix_png", "roc_png", "pr_png"):
        _is_picture(files[key])

    first = files["metrics_json"].read_text()
    again = evaluate_checkpoint(ckpt, str(data), out_dir=out, split="all", device="cpu")
    assert again["files"]["metrics_json"].name == "metrics-1.json"
    assert again["files"]["roc_png"].name == "roc-1.png"
    assert files["metrics_json"].read_text() == first  # the first run's file is kept


def test_test_split_is_rebuilt_from_the_checkpoint(trained):
    tmp, data, ckpt = trained
    result = evaluate_checkpoint(
        ckpt, {"type": "folder", "root": str(data)}, out_dir=tmp / "ev2", device="cpu"
    )
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert result["data"]["evaluated"] == meta["data"]["split"]["test"]
    test = meta["metrics"]["test"]
    assert result["overall"]["accuracy"] == pytest.approx(test["accuracy"])
    assert result["confusion_matrix"] == test["confusion_matrix"]


def test_class_mismatch_and_foreign_data_raise(trained, tmp_path):
    _, _, ckpt = trained
    other = _noise_folder(tmp_path / "other", {"cats": (10, 10, 10), "dogs": (200, 0, 0)}, n=2)
    with pytest.raises(ValueError, match=r"\['cats', 'dogs'\].*\['dark', 'pale'\]"):
        evaluate_checkpoint(ckpt, str(other), out_dir=tmp_path / "ev", split="all", device="cpu")
    same = _noise_folder(tmp_path / "same", {"dark": (90, 40, 120), "pale": (230, 200, 220)}, n=2)
    from histoview.models.checkpoint import read_metadata
    from histoview.training.datasets import discover_dataset

    with pytest.raises(ValueError, match="split='all'"):
        training_test_split(discover_dataset({"root": str(same)}), read_metadata(ckpt))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_checkpoint(ckpt, str(tmp_path / "nowhere"), out_dir=tmp_path / "ev", device="cpu")


def test_figures_are_matplotlib_figures_for_multiclass(tmp_path):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    y = np.repeat([0, 1, 2], 5)
    probs = rng.dirichlet(np.ones(3), size=15)
    probs[np.arange(15), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    cm = np.array([[4, 1, 0], [0, 5, 0], [1, 1, 3]])
    history = [
        {"epoch": e, "train_loss": 1 / e, "lr": 1e-3, "val": {"accuracy": 0.5 + e / 10}}
        for e in (1, 2, 3)
    ]
    figs = [
        confusion_matrix_figure(cm, classes),
        roc_figure(y, probs, classes),
        pr_figure(y, probs, classes),
        training_curves_figure(history),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert "macro AUC" in figs[1].axes[0].get_title()
    assert len([t for t in figs[1].axes[0].get_legend().get_texts() if "AUC" in t.get_text()]) == 3
    path = save_figure(figs[3], tmp_path / "curves.png")
    _is_picture(path)
    assert save_figure(figs[3], tmp_path / "curves.png").name == "curves-1.png"
