"""Checkpoints: safetensors + JSON, no pickle, clear errors on mismatch or corruption."""

from __future__ import annotations

import json

import pytest
import torch

from histoview.models import create_model
from histoview.models.checkpoint import CheckpointError, load_model, save_checkpoint, sidecar_path


@pytest.fixture
def ckpt(tmp_path):
    model = create_model("amil")
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model,
        {"model": "amil", "classes": ["benign", "malignant"], "model_kwargs": {"patch_size": 28}},
    )
    return model, path


def test_round_trip(ckpt):
    model, path = ckpt
    loaded, meta = load_model(path, device="cpu")
    assert meta["classes"] == ["benign", "malignant"] and meta["format"] == "histoview-checkpoint"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not loaded.training
    # weights are safetensors, not a pickle: the file starts with an 8-byte header length and JSON
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x04" not in raw[:16]


def test_mismatched_model_is_a_clear_error(ckpt, tmp_path):
    _, path = ckpt
    meta = json.loads(sidecar_path(path).read_text())
    meta["model_kwargs"]["gated"] = True  # sidecar now describes a model with more tensors
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match model 'amil'.*missing"):
        load_model(path, device="cpu")
    with pytest.raises(CheckpointError, match="not 'rsf'"):
        meta["model_kwargs"]["gated"] = False
        sidecar_path(path).write_text(json.dumps(meta))
        load_model(path, device="cpu", model_name="rsf")


def test_corrupted_weights_and_sidecar(ckpt):
    _, path = ckpt
    data = bytearray(path.read_bytes())
    data[-10:] = b"\x00" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="m.safetensors.*hash"):
        load_model(path, device="cpu")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path, device="cpu")
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_model(path, device="cpu")


def test_truncated_safetensors_without_hash(ckpt):
    _, path = ckpt
    meta = json.loads(sidecar_path(path).read_text())
    meta.pop("weights_sha256")
    sidecar_path(path).write_text(json.dumps(meta))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_model(path, device="cpu")


def test_everything_training_writes_passes_the_schema(tmp_path):
    """A sidecar with every field training/run.py and the engine write (numpy scalars,
    tuples, a NaN metric of a one-class validation set, unknown extras) saves and loads."""
    import numpy as np

    from histoview.models.checkpoint import read_metadata

    meta = {
        "model": "amil",
        "model_kwargs": {"patch_size": 28, "gated": False},
        "classes": ["benign", "malignant"],
        "patch": {"patch_size": 28, "stride": 28, "max_background": None, "instance_dropout": 0.25},
        "input": {"patch_size": 28, "stride": 28, "max_background": 0.9},
        "pixel_size_um": np.float64(0.5),
        "normalisation": {"mean": (0.5, 0.5, 0.5), "std": [0.5, 0.5, 0.5]},
        "data": {
            "layout": "folder",
            "task": "binary",
            "root": "/data",
            "classes": ["b", "m"],
            "images": 40,
            "images_per_class": {"b": 20, "m": 20},
            "patients": None,
            "magnifications": {"100X": 40},
            "split": {"by": "image", "seed": 0, "fractions": (0.7, 0.15, 0.15)},
        },
        "name": None,
        "synthetic": False,
        "notice": "Research use only, not for diagnosis.",
        "epoch": 3,
        "metrics": {
            "validation": {
                "accuracy": np.float32(0.75),
                "roc_auc": float("nan"),
                "confusion_matrix": np.array([[3, 1], [0, 4]]),
            }
        },
        "threshold": np.float64(0.42),
        "train_options": {"epochs": 8, "lr": 5e-4, "device": None},
        "a_newer_field": {"kept": True},
    }
    path = save_checkpoint(tmp_path / "full.safetensors", create_model("amil"), meta)
    back = read_metadata(path)
    assert back["threshold"] == pytest.approx(0.42) and back["a_newer_field"] == {"kept": True}
    assert back["data"]["split"]["fractions"] == [0.7, 0.15, 0.15]
    model, _ = load_model(path, device="cpu")
    assert not model.training


def test_pretrained_in_a_sidecar_is_not_passed_to_the_factory(ckpt):
    """A checkpoint holds every weight: ``pretrained: true`` in its sidecar (histoview strips
    it when saving; older or hand-made sidecars may keep it) is not passed on (A-MIL's
    factory takes no ``pretrained``; a CNN's would look up ImageNet weights for nothing)."""
    _, path = ckpt
    meta = json.loads(sidecar_path(path).read_text())
    meta["model_kwargs"]["pretrained"] = True
    sidecar_path(path).write_text(json.dumps(meta))
    model, back = load_model(path, device="cpu")
    assert back["model_kwargs"]["pretrained"] is True and not model.training
