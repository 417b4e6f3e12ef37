"""The training engine: progress, cancel keeps the last checkpoint, resume continues, kill survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from histoview.models.checkpoint import load_model, read_metadata
from histoview.training.run import iter_train_from_config, train_from_config


@pytest.fixture
def tiny_folder(tmp_path):
    """Two classes that differ in colour: learnable in a few steps."""
    rng = np.random.default_rng(0)
    for cls, colour in (("pale", (230, 200, 220)), ("dark", (90, 40, 120))):
        for i in range(8):
            img = np.clip(np.array(colour) + rng.normal(0, 12, (56, 84, 3)), 0, 255).astype(
                np.uint8
            )
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{i}.png")
    return tmp_path


def _config(root, epochs=2, out="run"):
    return {
        "name": "tiny",
        "model": "amil",
        "data": {"type": "folder", "root": str(root / "data")},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": epochs, "batch_size": 2, "lr": 0.002, "device": "cpu"},
        "output_dir": str(root / out),
    }


def test_train_reports_progress_and_writes_checkpoint_and_report(tiny_folder):
    events = []
    result = train_from_config(_config(tiny_folder), progress=events.append)
    kinds = [e["event"] for e in events if e["event"] != "message"]
    assert kinds[0] == "start" and kinds.count("epoch_end") == 2 and "step" in kinds
    steps = [e for e in events if e["event"] == "step"]
    assert all(e["eta"] >= 0 for e in steps)
    meta = read_metadata(result["checkpoint"])
    assert meta["model"] == "amil" and set(meta["classes"]) == {"pale", "dark"}
    assert meta["patch"]["patch_size"] == 28 and meta["normalisation"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["data"]["layout"] == "folder" and "test" in meta["metrics"]
    assert meta["code_version"] and meta["weights_sha256"]
    report = json.loads(result["report"].read_text())
    assert {
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "specificity",
        "f1_macro",
        "roc_auc",
        "pr_auc",
        "confusion_matrix",
    } <= set(report["test"])
    model, _ = load_model(result["checkpoint"], device="cpu")
    assert model.model_config.name == "amil"


def test_cancel_mid_epoch_keeps_last_checkpoint_and_resume_continues(tiny_folder):
    cfg = _config(tiny_folder, epochs=3)
    steps_seen = {"n": 0}

    def stop_in_second_epoch():
        return steps_seen["n"] >= 5  # 4 steps per epoch: stop inside epoch 2

    gen = iter_train_from_config(cfg, should_stop=stop_in_second_epoch)
    events = []
    try:
        while True:
            e = next(gen)
            events.append(e)
            if e["event"] == "step":
                steps_seen["n"] += 1
    except StopIteration as stop:
        result = stop.value
    assert events[-1]["event"] == "cancelled" and result["cancelled"]
    last = tiny_folder / "run" / "last.safetensors"
    assert read_metadata(last)["epoch"] == 1
    before = last.read_bytes()
    events2 = []
    result2 = train_from_config(cfg, progress=events2.append)
    events2 = [e for e in events2 if e["event"] != "message"]
    assert events2[0]["event"] == "resumed" and events2[0]["epoch"] == 1
    assert [e["epoch"] for e in events2 if e["event"] == "epoch_end"] == [2, 3]
    assert read_metadata(last)["epoch"] == 3 and last.read_bytes() != before
    assert len(json.loads(result2["report"].read_text())["history"]) == 3


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tiny_folder):
    import yaml

    cfg = _config(tiny_folder, epochs=40, out="killed")
    cfg_path = tiny_folder / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "histoview.cli", "train", str(cfg_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tiny_folder / "killed" / "train_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        state.exists() and json.loads(state.read_text())["epoch"] >= 2
    ):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch_at_kill = json.loads(state.read_text())["epoch"]
    assert 2 <= epoch_at_kill < 40
    cfg["train"]["epochs"] = epoch_at_kill + 1
    events = []
    train_from_config(cfg, progress=events.append)
    events = [e for e in events if e["event"] != "message"]
    assert events[0]["event"] == "resumed" and events[0]["epoch"] == epoch_at_kill
    assert read_metadata(tiny_folder / "killed" / "last.safetensors")["epoch"] == epoch_at_kill + 1


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_epoch(tiny_folder, monkeypatch):
    import torch

    import histoview.training.engine as engine
    from histoview.training.engine import TrainingDiverged

    real, calls = engine._train_step, []

    def poisoned(model, *args, **kwargs):  # a weight turns NaN before epoch 2's 2nd step
        calls.append(1)
        if len(calls) == 6:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(engine, "_train_step", poisoned)
    cfg = _config(tiny_folder, epochs=3)
    out = tiny_folder / "run"
    events, saved = [], {}

    def progress(event):  # the run folder as epoch 1 left it
        events.append(event)
        if event["event"] == "epoch_end":
            saved.update({p.name: p.read_bytes() for p in out.iterdir() if p.is_file()})

    with pytest.raises(TrainingDiverged) as info:
        train_from_config(cfg, progress=progress)
    assert str(info.value).startswith(
        "training stopped: the loss became nan at epoch 2, step 2 of 4; nothing of epoch 2 was "
        "saved, last.safetensors (epoch 1) and best.safetensors are kept as they were"
    )
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1]
    assert {"last.safetensors", "best.safetensors", "train_state.safetensors"} <= set(saved)
    for name, data in saved.items():  # not a byte of epoch 1's files changed
        assert (out / name).read_bytes() == data, name
    assert read_metadata(out / "last.safetensors")["epoch"] == 1
    load_model(out / "best.safetensors", device="cpu")  # whole and finite
    # the cause fixed, the run resumes from epoch 1
    monkeypatch.setattr(engine, "_train_step", real)
    events = []
    train_from_config(cfg, progress=events.append)
    assert [e["epoch"] for e in events if e["event"] == "resumed"] == [1]
    assert read_metadata(out / "last.safetensors")["epoch"] == 3


def test_histoview_train_refuses_a_diverging_run(tmp_path, capsys):
    from histoview.cli import main

    path = tmp_path / "diverge.yaml"
    path.write_text(
        "model: test_cnn\ndata: {type: phantom, task: binary, n_per_class: 4}\n"
        "split: {fractions: [0.5, 0.25, 0.25]}\n"
        "train: {epochs: 2, batch_size: 2, device: cpu, optimizer: sgd, lr: 1e6}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("histoview train: error: training stopped: ")
    assert "epoch 1" in err[0] and "no checkpoint was written" in err[0]
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_a_run_saved_by_an_older_histoview_resumes(tiny_folder):
    """Older runs kept the optimizer's tensors in train_state.safetensors, its record in
    train_state.json and the weights only in last.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import save

    cfg = _config(tiny_folder, epochs=1)
    train_from_config(cfg)
    out = tiny_folder / "run"
    unit = out / "train_state.safetensors"
    with safe_open(str(unit), "pt") as f:
        record = json.loads(f.metadata()["histoview_train_state"])
        tensors = {
            k[len("optimizer.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("optimizer.")
        }
    unit.write_bytes(save(tensors))
    (out / "train_state.prev.safetensors").unlink(missing_ok=True)
    keep = ("epoch", "best_score", "history", "param_groups", "scalars")
    (out / "train_state.json").write_text(json.dumps({k: record[k] for k in keep}))
    cfg["train"]["epochs"] = 2
    events = []
    train_from_config(cfg, progress=events.append)
    assert [e["epoch"] for e in events if e["event"] == "resumed"] == [1]
    assert read_metadata(out / "last.safetensors")["epoch"] == 2
