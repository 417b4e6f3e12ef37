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
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"model": "amil", "classes": ["benign", "malignant"],
                                                               "model_kwargs": {"patch_size": 28}})
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
