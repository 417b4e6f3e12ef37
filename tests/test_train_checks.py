"""Training refuses one-class data and warns about splits too small to mean anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histoview.training.datasets import (
    MIN_IMAGES_PER_CLASS,
    check_trainable,
    detect_layout,
    discover_dataset,
    split_dataset,
    split_warnings,
)


def _png(path: Path, value: int) -> None:
    from skimage.io import imsave

    rng = np.random.default_rng(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.clip(value + rng.normal(0, 15, (40, 40, 3)), 0, 255).astype(np.uint8)
    imsave(path, img, check_contrast=False)


def _folders(root: Path, counts: dict[str, int]) -> Path:
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / name / f"{name}_{i}.png", 60 + 120 * k)
    return root


def test_one_class_is_refused(tmp_path):
    # BreakHis file names of benign tumours only: the layout has two classes, the data one
    for i in range(6):
        _png(tmp_path / "benign" / f"SOB_B_A-14-22549AB-100-{i:03d}.png", 200)
    dataset = discover_dataset({"root": str(tmp_path / "benign")})
    assert dataset.layout == "breakhis" and dataset.classes == ("benign", "malignant")
    with pytest.raises(ValueError, match=r"1 class only \(benign: 6, malignant: 0\).*two classes"):
        check_trainable(dataset)
    # one class folder is named as such, not "cannot recognise the layout"
    _folders(tmp_path / "one", {"tumour": 3})
    with pytest.raises(ValueError, match="one class folder only .tumour.*at least two classes"):
        detect_layout(tmp_path / "one")
    # two class folders, one of them empty
    _folders(tmp_path / "empty", {"a": 4, "b": 0})
    with pytest.raises(ValueError, match=r"a: 4, b: 0"):
        check_trainable(discover_dataset({"root": str(tmp_path / "empty")}))
    check_trainable(discover_dataset({"root": str(_folders(tmp_path / "two", {"a": 1, "b": 1}))}))


def test_small_splits_warn_per_class(tmp_path):
    dataset = discover_dataset({"root": str(_folders(tmp_path / "d", {"a": 60, "b": 12}))})
    settings, parts = split_dataset(dataset)
    assert settings == {"by": "patient", "fractions": (0.7, 0.15, 0.15), "seed": 0}
    assert [len(p) for p in parts] == [50, 11, 11]  # a: 42/9/9, b: 8/2/2
    warnings = split_warnings(dataset.classes, parts)
    assert warnings == [
        f"validation split too small: 2 of b (under {MIN_IMAGES_PER_CLASS} images per class); "
        "its metrics for that class mean little",
        f"test split too small: 2 of b (under {MIN_IMAGES_PER_CLASS} images per class); "
        "its metrics for that class mean little",
    ]
    # a big enough split says nothing; the minimum is a parameter
    assert split_warnings(dataset.classes, parts, minimum=2) == []
    _, parts = split_dataset(dataset, {"fractions": (0.5, 0.25, 0.25)})
    assert split_warnings(dataset.classes, parts, minimum=3) == []
    # a class missing from the training split is named there
    assert split_warnings(("a", "b"), ([], [], []), minimum=1)[0].startswith(
        "training split too small: 0 of a, 0 of b"
    )


def test_train_refuses_one_class_and_reports_small_splits(tmp_path):
    from histoview.training.run import train_from_config

    one = tmp_path / "one"
    _folders(one, {"a": 6, "b": 0})
    config = {
        "model": "test_cnn",
        "data": {"root": str(one)},
        "output_dir": str(tmp_path / "r1"),
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
    }
    with pytest.raises(ValueError, match="at least two classes"):
        train_from_config(config)
    assert not (tmp_path / "r1").exists()  # refused before anything was written

    two = _folders(tmp_path / "two", {"a": 8, "b": 8})
    events: list[dict] = []
    config = {**config, "data": {"root": str(two)}, "output_dir": str(tmp_path / "r2")}
    result = train_from_config(config, progress=events.append)
    shown = [e["warning"] for e in events if e.get("warning")]
    assert len(shown) == 2 and shown[1].startswith("test split too small: 1 of a, 1 of b")
    assert all(f"WARNING: {w}" in [e.get("text") for e in events] for w in shown)
    report = json.loads(Path(result["report"]).read_text())
    assert report["warnings"] == shown
    from histoview.models.checkpoint import read_metadata

    assert read_metadata(result["checkpoint"])["data"]["split"]["warnings"] == shown
