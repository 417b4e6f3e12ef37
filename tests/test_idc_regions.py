"""IDC regions (A-MIL bags), named held-out patients, the test split rebuilt for evaluation,
and confidence intervals by patient, on the tiny generated patch folder of test_idc.py."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from histoview.preprocessing.idc import find_idc_patches, idc_regions, region_image
from histoview.training.datasets import discover_dataset, split_dataset
from histoview.training.idc_split import within_patient_split
from histoview.training.patient_bootstrap import (
    balanced_accuracy,
    f1_positive,
    patient_bootstrap,
    roc_auc_or_nan,
)
from test_idc import LAYOUT, colour, idc_dir  # noqa: F401 (the fixture)


def test_regions_are_cut_from_the_names_and_labelled_by_any_idc(idc_dir):  # noqa: F811
    patches = find_idc_patches(idc_dir)
    regions = idc_regions(patches, cells=2, stride=1)
    by = {(r.patient, r.row, r.col): r for r in regions}
    # patient 1001: cells (row 0: 0 0 1 .), (row 1: 0 1 1 0), (row 2: . . . 0)
    assert by[("1001", 0, 0)].patches == 4 and by[("1001", 0, 0)].label == 1
    assert by[("1001", 1, 2)].idc_patches == 1 and by[("1001", 1, 2)].label == 1
    assert by[("1001", 1, 0)].patches == 2  # half the region: kept by default
    fuller = idc_regions(patches, cells=2, stride=1, min_patches=3)
    assert ("1001", 1, 0) not in {(r.patient, r.row, r.col) for r in fuller}
    assert {r.label for r in regions if r.patient == "1005"} == {0}
    # the region's pixels are the mosaic's: patch (col 2, row 1) at cell (1, 1) of (0, 1)
    image = region_image(idc_dir, by[("1001", 0, 1)])
    assert image.shape == (100, 100, 3)
    assert tuple(image[75, 75]) == colour("1001", 2, 1)
    assert tuple(region_image(idc_dir, by[("1001", 1, 2)])[75, 25]) == (255, 255, 255)  # glass
    with pytest.raises(ValueError, match="at least 1"):
        idc_regions(patches, cells=0)


def test_region_bags_split_by_patient_balanced_within_each(idc_dir):  # noqa: F811
    ds = discover_dataset({"type": "idc", "root": str(idc_dir), "bag_cells": 2, "bag_stride": 1})
    assert ds.summary()["bag_cells"] == 2 and all(s.region is not None for s in ds.samples)
    rgb, mpp = ds.samples[0].load()
    assert rgb.shape == (100, 100, 3) and mpp == 4.0
    assert len({s.key for s in ds.samples}) == len(ds.samples)
    settings, (train, val, test) = split_dataset(ds, {"test_patients": ["1003"]})
    # pairing is decided on the samples: every 2 x 2 region of 1001 holds IDC, so as bags
    # 1001 is a one-class patient (tested, never trained on)
    assert settings["patients"]["train"] == ["1002"]
    assert settings["patients"]["test"] == ["1001", "1003", "1004", "1005"] and not val
    counts = Counter(s.label for s in train)
    assert counts[0] == counts[1] > 0
    with pytest.raises(ValueError, match="needs bag_cells"):
        discover_dataset({"type": "idc", "root": str(idc_dir), "bag_stride": 1})


def test_named_patients_are_held_out_and_checked(idc_dir):  # noqa: F811
    ds = discover_dataset({"type": "idc", "root": str(idc_dir)})
    (train, val, test), names = within_patient_split(
        ds.samples, test_patients=["1002", "1005"], val_patients=["1003"]
    )
    assert names == {
        "train": ["1001"],
        "val": ["1003"],
        "test": ["1002", "1004", "1005"],
        "excluded": [],
    }
    assert {s.patient for s in test} == {"1002", "1004", "1005"}
    assert all(s.patient == "1003" for s in val)
    with pytest.raises(ValueError, match="not in the data: 9999"):
        within_patient_split(ds.samples, test_patients=["9999"])
    with pytest.raises(ValueError, match="none is left to train on"):
        within_patient_split(ds.samples, test_patients=["1001", "1002", "1003"])
    with pytest.raises(ValueError, match="named twice"):
        within_patient_split(ds.samples, test_patients=["1001"], val_patients=["1001"])
    phantom = discover_dataset({"type": "phantom", "n_per_class": 2})
    with pytest.raises(ValueError, match="apply to IDC data"):
        split_dataset(phantom, {"test_patients": ["x"]})


def test_evaluate_rebuilds_the_idc_test_split(idc_dir, tmp_path, one_torch_thread):  # noqa: F811
    from histoview.training.evaluate import evaluate_checkpoint
    from histoview.training.run import train_from_config

    cfg = {
        "model": "test_cnn",
        "data": {"type": "idc", "root": str(idc_dir)},
        "split": {"test_patients": ["1003"], "val_patients": []},
        "input": {"tiled": True, "pixel_size_um": 4.0},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        "output_dir": str(tmp_path / "run"),
    }
    result = train_from_config(cfg)
    meta = json.loads(result["checkpoint"].with_suffix(".json").read_text())
    split = meta["data"]["split"]
    assert split["test_patients"] == ["1003"] and split["warnings"] == []  # no val: no warning
    assert meta["input"]["tiled"] is True
    out = evaluate_checkpoint(result["checkpoint"], str(idc_dir), out_dir=tmp_path / "ev")
    n_test = sum(len(LAYOUT[p]) for p in ("1003", "1004", "1005"))
    assert out["metrics"]["n"] == n_test == split["test"]


def test_patient_bootstrap_is_seeded_and_resamples_patients():
    rng = np.random.default_rng(1)
    patients = np.repeat([f"p{i}" for i in range(8)], 25)
    y = np.r_[np.tile([0, 1], 50), np.ones(100, int)]  # p0-p3 mixed, p4-p7 positive only
    scores = np.clip(y * 0.4 + rng.random(200) * 0.6, 0, 1)
    strata = {p: ("mixed" if i < 4 else "pos") for i, p in enumerate(sorted(set(patients)))}
    a = patient_bootstrap(roc_auc_or_nan, y, scores, patients, strata=strata, n_boot=200)
    b = patient_bootstrap(roc_auc_or_nan, y, scores, patients, strata=strata, n_boot=200)
    assert a == b and a["low"] <= a["value"] <= a["high"]
    assert a["replicates"] == 200  # every replicate keeps both classes (strata)
    decided = (scores >= 0.5).astype(int)
    assert balanced_accuracy(y, decided) == pytest.approx(
        ((decided[y == 1] == 1).mean() + (decided[y == 0] == 0).mean()) / 2
    )
    assert np.isnan(balanced_accuracy(np.ones(3), np.ones(3)))
    assert f1_positive(np.array([1, 1, 0]), np.array([1, 0, 1])) == pytest.approx(0.5)
    # one patient: nothing varies between replicates
    one = patient_bootstrap(roc_auc_or_nan, y[:25], scores[:25], patients[:25], n_boot=50)
    assert one["low"] == one["high"] == one["value"]
