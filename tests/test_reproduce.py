"""Paper-table experiments: the registry, old names, reduced runs, leak labels, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from histoview.training.experiments import EXPERIMENTS, OLD_NAMES
from histoview.training.reproduce import (
    LEAK_LABEL,
    NOT_AVAILABLE,
    describe_experiment,
    format_table,
    list_experiments,
    run_experiment,
)

REQUIRED = (
    "patil2019-table4",
    "sureka2020-table2",
    "rmcg-table1",
    "cspresnet50-fpn-se-tables2-5",
    "liu2023-breakhis",
)


def _fake_breakhis(root, patients=4, per_patient=2):
    """Flat folder of SOB_ names: benign pale, malignant dark, at 100X and 40X."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    classes = (("B", "A", (230, 200, 220), 1000), ("M", "DC", (90, 40, 120), 2000))
    for group, sub, colour, first in classes:
        for p in range(patients):
            for mag in (100, 40):
                for seq in range(per_patient):
                    img = np.clip(np.array(colour) + rng.normal(0, 12, (56, 84, 3)), 0, 255)
                    name = f"SOB_{group}_{sub}-14-{first + p}-{mag}-{seq + 1:03d}.png"
                    Image.fromarray(img.astype(np.uint8)).save(root / name)
    return root


def test_every_experiment_is_listed_with_the_papers_figures():
    assert set(REQUIRED) <= set(EXPERIMENTS)
    listing = list_experiments()
    for name in REQUIRED:
        assert name in listing
        assert "protocol" in describe_experiment(name)
    e0 = EXPERIMENTS["patil2019-table4"]
    assert e0.row("amil-100x").paper == {"accuracy": 86.45}
    assert e0.row("vgg16-400x").paper == {"accuracy": 72.16}
    assert {r.model for r in e0.rows} == {"customnet", "vgg16", "resnet18", "amil"}
    assert [r.paper["accuracy"] for r in EXPERIMENTS["sureka2020-table2"].rows] == [
        94.0,
        92.0,
        90.0,
    ]
    e2 = EXPERIMENTS["rmcg-table1"]
    assert e2.row("rmcg").paper == {
        "accuracy": 82.87,
        "f1_macro": 84.12,
        "precision_macro": 82.15,
        "recall_macro": 82.09,
    }
    assert {"alexnet", "ecc", "gcnii"} <= {r.model for r in e2.rows}
    assert NOT_AVAILABLE not in listing  # every RMCG Table 1 baseline is registered now
    e3 = EXPERIMENTS["cspresnet50-fpn-se-tables2-5"]
    assert len(e3.rows) == 10
    assert e3.row("cspresnet50_fpn_se-bin-all").paper["accuracy"] == 95.53
    assert e3.row("cspresnet50_fpn_se-mc-400x").paper["roc_auc"] == 92.91
    assert e3.row("cspresnet50_fpn_se-mc-all").data == {"task": "subtype", "magnification": None}
    for name in REQUIRED[:4]:  # every metric of every row has the paper's figure
        for row in EXPERIMENTS[name].rows:
            assert set(row.paper) == set(EXPERIMENTS[name].metrics), (name, row.key)
    e4 = EXPERIMENTS["liu2023-breakhis"]
    assert set(e4.metrics) == {"accuracy", "f1_macro", "iba", "gmean"}
    assert e4.figures_note and not any(r.paper for r in e4.rows)
    assert e4.row("dalaresnet50-40x").train == {
        "epochs": 50,
        "batch_size": 32,
        "lr": 1e-4,
        "optimizer": "adam",
    }


def test_reduced_amil_run_reports_ours_beside_the_paper_and_labels_the_leak(tmp_path):
    root = _fake_breakhis(tmp_path / "breakhis")
    events = []
    results = run_experiment(
        "patil2019-table4",
        root,
        out_dir=tmp_path / "out",
        epochs=1,
        max_images=4,
        rows=["amil-100x"],
        split_by="image",
        device="cpu",
        progress=events.append,
    )
    (res,) = results
    assert res["status"] == "ok" and res["model"] == "amil" and res["setting"] == "100X"
    assert res["paper"] == {"accuracy": 86.45}
    assert 0.0 <= res["ours"]["accuracy"] <= 100.0 and res["n_test"] > 0
    assert res["leaks_patients"] and res["epochs"] == 1
    meta = json.loads((tmp_path / "out" / "amil-100x" / "best.json").read_text())
    assert meta["data"]["magnifications"] == {"100X": 8} and meta["data"]["split"]["by"] == "image"
    assert meta["model_kwargs"]["patch_size"] == 28
    table = format_table(results)
    line = next(t for t in table.splitlines() if t.startswith("A-MIL"))
    assert "86.45" in line and f"{res['ours']['accuracy']:.2f}" in line and LEAK_LABEL in line
    assert table.count(LEAK_LABEL) >= 2 and "reduced run" in table
    texts = [e["text"] for e in events if e.get("text") and e.get("row")]
    assert texts and all(LEAK_LABEL in t for t in texts)
    assert (tmp_path / "out" / "results.txt").read_text().strip() == table
    assert (tmp_path / "out" / "amil-100x" / "evaluation" / "confusion_matrix.png").exists()
    assert (tmp_path / "out" / "amil-100x" / "training_curves.png").exists()


def test_unavailable_rows_are_skipped_with_a_note(tmp_path, monkeypatch):
    import histoview.training.reproduce as rp

    # every row's model is registered in this version: pretend two are not
    monkeypatch.setattr(rp, "_available", lambda model: model not in {"alexnet", "ecc"})
    (tmp_path / "grades" / "g1").mkdir(parents=True)
    results = run_experiment(
        "rmcg-table1",
        tmp_path / "grades",
        out_dir=tmp_path / "out",
        rows=["alexnet", "ecc"],
        epochs=1,
    )
    assert [r["status"] for r in results] == [NOT_AVAILABLE, NOT_AVAILABLE]
    table = format_table(results)
    assert "AlexNet" in table and "77.35" in table and NOT_AVAILABLE in table
    assert "patient-level split" in table and LEAK_LABEL not in table


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(KeyError, match="patil2019-table4.*liu2023-breakhis"):
        run_experiment("seed999", tmp_path, out_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        run_experiment("patil2019-table4", tmp_path / "no-such-folder", out_dir=tmp_path / "out")
    with pytest.raises(KeyError, match="amil-100x"):
        run_experiment("patil2019-table4", tmp_path, out_dir=tmp_path / "out", rows=["amil-1000x"])


def test_old_experiment_names_still_work_with_a_one_line_note(tmp_path, capsys):
    assert set(OLD_NAMES.values()) == set(REQUIRED)
    for old, new in OLD_NAMES.items():
        assert old not in EXPERIMENTS
        assert describe_experiment(old) == describe_experiment(new)
        note = capsys.readouterr().err.strip().splitlines()
        assert len(note) == 1 and old in note[0] and new in note[0] and "deprecated" in note[0]
    # a run under the old name runs (and labels its results with) the new one
    with pytest.raises(FileNotFoundError, match="patil2019-table4"):
        run_experiment("seed000-table4", tmp_path / "no-such-folder", out_dir=tmp_path / "out")
    assert "seed000-table4" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.slow
def test_reduced_run_on_real_breakhis(breakhis_dir, tmp_path):
    results = run_experiment(
        "patil2019-table4",
        breakhis_dir,
        out_dir=tmp_path,
        epochs=1,
        max_images=4,
        rows=["amil-100x"],
        device="cpu",
    )
    assert results[0]["status"] == "ok" and "accuracy" in results[0]["ours"]
    assert "patient-level split" in format_table(results)
