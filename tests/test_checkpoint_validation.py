"""Damaged checkpoints are refused with one line naming the file and the problem.

The corpus is built here: a valid A-MIL checkpoint, then copies with NaN or infinite
weights and sidecars with each kind of damage (missing or unknown model, wrong types,
impossible values, not JSON, truncated), a sidecar or config naming a ``.pth`` file,
and a model library holding good and broken checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histoview.cli import main
from histoview.models import create_model
from histoview.models.checkpoint import (
    CheckpointError,
    load_model,
    read_metadata,
    save_checkpoint,
    sidecar_path,
)
from histoview.models.library import list_checkpoints, skipped_checkpoints, user_library_dir

SRC = Path(__file__).resolve().parents[1] / "src" / "histoview"
META = {"model": "amil", "classes": ["benign", "malignant"], "model_kwargs": {"patch_size": 28}}


def _write_raw(path: Path, state: dict, meta: dict) -> Path:
    """A checkpoint written without save_checkpoint's checks (as a damaged file would be),
    with a sidecar whose hash matches the weights."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in state.items()})
    path.write_bytes(data)
    full = {
        "format": "histoview-checkpoint",
        "format_version": 1,
        **meta,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    sidecar_path(path).write_text(json.dumps(full))
    return path


@pytest.fixture
def good(tmp_path):
    return save_checkpoint(tmp_path / "good.safetensors", create_model("amil"), META)


def _one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message
    return message


# -- non-finite weights ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_value, word",
    [
        (float("nan"), "3 NaN and 0 infinite"),
        (float("inf"), "0 NaN and 3 infinite"),
        (-float("inf"), "0 NaN and 3 infinite"),
    ],
)
def test_non_finite_weights_are_refused_at_load(tmp_path, bad_value, word):
    state = create_model("amil").state_dict()
    name = [k for k, v in state.items() if v.is_floating_point() and v.numel() > 3][1]
    state[name].view(-1)[:3] = bad_value
    path = _write_raw(tmp_path / "bad.safetensors", state, META)
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu")
    msg = _one_line(str(info.value))
    assert msg.startswith(f"{path}: non-finite weights: tensor {name!r} has {word} values")


def test_non_finite_tensors_counts_and_skips_what_is_fine():
    from histoview.models.checkpoint import non_finite_tensors

    state = {
        "huge": torch.full((4,), 1e308, dtype=torch.float64),  # its sum overflows: still finite
        "steps": torch.tensor([3, 4]),  # integers cannot be NaN
        "half": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], dtype=torch.float16),
        "fine": torch.zeros(3),
        "complex": torch.tensor([1 + 1j, complex(float("nan"), 0)]),
    }
    assert non_finite_tensors(state) == [("half", 1, 2, 4), ("complex", 1, 0, 2)]


def test_saving_non_finite_weights_is_refused_and_writes_nothing(tmp_path):
    model = create_model("amil")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
        list(model.parameters())[-1].view(-1)[0] = float("inf")
    path = tmp_path / "diverged.safetensors"
    with pytest.raises(CheckpointError, match=r"refusing to save non-finite.*2 tensors affected"):
        save_checkpoint(path, model, META)
    assert not path.exists() and not sidecar_path(path).exists()


def _phantom_png(tmp_path) -> Path:
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    image = make_phantom("benign", preset="breakhis", seed=1).image
    path = tmp_path / "tissue.png"
    Image.fromarray(np.asarray(image)).save(path)
    return path


def test_cli_explain_refuses_nan_weights_in_one_line(tmp_path, capsys):
    state = create_model("amil").state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    bad = _write_raw(tmp_path / "bad.safetensors", state, META)
    image = _phantom_png(tmp_path)
    code = main(
        [
            "explain",
            str(image),
            "--method",
            "amil",
            "--checkpoint",
            str(bad),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = _one_line(capsys.readouterr().err)
    assert code == 2
    assert f"bad.safetensors: non-finite weights: tensor {name!r}" in err
    assert not list(tmp_path.rglob("tissue.*.json"))  # nothing written


def test_cli_explain_nan_weights_subprocess_has_no_traceback(tmp_path):
    state = create_model("amil").state_dict()
    state[next(iter(state))].view(-1)[0] = float("nan")
    bad = _write_raw(tmp_path / "bad.safetensors", state, META)
    image = _phantom_png(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "histoview.cli",
            "explain",
            str(image),
            "--method",
            "amil",
            "--checkpoint",
            str(bad),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "non-finite weights" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# -- damaged sidecars -----------------------------------------------------------------------------
def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value, section=None):
    def change(meta):
        (meta[section] if section else meta)[key] = value

    return change


SIDECAR_CASES = {
    "missing model": (_drop("model"), "field 'model' is missing"),
    "unknown model": (_set("model", "resnet9000"), "field 'model': unknown model 'resnet9000'"),
    "model not a string": (
        _set("model", 7),
        "field 'model': expected a registered model name, got 7",
    ),
    "missing classes": (_drop("classes"), "field 'classes' is missing"),
    "classes not a list": (
        _set("classes", 3),
        "field 'classes': expected a list of class names (at least two, distinct), got 3",
    ),
    "classes a string": (
        _set("classes", "benign,malignant"),
        "field 'classes': expected a list of class names (at least two, distinct), "
        "got 'benign,malignant'",
    ),
    "one class": (
        _set("classes", ["benign"]),
        "field 'classes': expected a list of class names (at least two, distinct), got ['benign']",
    ),
    "duplicate classes": (
        _set("classes", ["a", "a"]),
        "field 'classes': expected distinct class names, got 'a' more than once",
    ),
    "class not a string": (_set("classes", ["a", 2]), "field 'classes': expected a list"),
    "negative pixel size": (
        _set("pixel_size_um", -0.5),
        "field 'pixel_size_um': expected a positive number of micrometres per "
        "pixel (or null), got -0.5",
    ),
    "zero pixel size": (_set("pixel_size_um", 0), "field 'pixel_size_um': expected a positive"),
    "pixel size a string": (_set("pixel_size_um", "0.5"), "field 'pixel_size_um': expected"),
    "patch size a string": (
        _set("patch_size", "28", "patch"),
        "field 'patch.patch_size': expected a positive whole number of pixels, got '28'",
    ),
    "patch size a float": (_set("patch_size", 28.5, "patch"), "field 'patch.patch_size': expected"),
    "negative stride": (_set("stride", -4, "patch"), "field 'patch.stride': expected a positive"),
    "patch not a mapping": (_set("patch", [28, 28]), "field 'patch': expected a mapping"),
    "input size of one number": (
        _set("input", {"input_size": [128]}),
        "field 'input.input_size': expected [height, width]",
    ),
    "model_kwargs a list": (_set("model_kwargs", [28]), "field 'model_kwargs': expected a mapping"),
    "metrics a list": (_set("metrics", [0.9]), "field 'metrics': expected a mapping"),
    "threshold above one": (_set("threshold", 1.5), "field 'threshold': expected a probability"),
    "synthetic as 1": (_set("synthetic", 1), "field 'synthetic': expected true or false, got 1"),
    "bad hash": (_set("weights_sha256", "abc"), "field 'weights_sha256': expected 64 lowercase"),
    "format version a string": (
        _set("format_version", "1"),
        "field 'format_version': expected a positive whole number, got '1'",
    ),
    "std of zero": (
        _set("normalisation", {"mean": [0.5] * 3, "std": [0.5, 0, 0.5]}),
        "field 'normalisation.std': expected three positive numbers",
    ),
}


@pytest.mark.parametrize("case", list(SIDECAR_CASES))
def test_each_broken_sidecar_names_file_and_field(good, case):
    damage, expected = SIDECAR_CASES[case]
    side = sidecar_path(good)
    meta = json.loads(side.read_text())
    meta.setdefault("patch", {"patch_size": 28, "stride": 28, "max_background": None})
    damage(meta)
    side.write_text(json.dumps(meta))
    for load in (read_metadata, lambda p: load_model(p, device="cpu")):
        with pytest.raises(CheckpointError) as info:
            load(good)
        msg = _one_line(str(info.value))
        assert msg.startswith(f"{side}: {expected}"), msg


def test_several_problems_are_counted_in_the_one_line(good):
    side = sidecar_path(good)
    meta = json.loads(side.read_text()) | {"classes": 3, "pixel_size_um": 0, "epoch": -1}
    side.write_text(json.dumps(meta))
    msg = _one_line(str(pytest.raises(CheckpointError, read_metadata, good).value))
    assert msg.endswith("got 3 (and 2 more problems)")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "metadata is not valid JSON"),
        ("", "metadata is not valid JSON"),
        ("[1, 2, 3]", "not a histoview checkpoint sidecar"),
        ('{"format": "something-else", "model": "amil"}', "not a histoview checkpoint sidecar"),
    ],
)
def test_sidecar_that_is_not_json_or_not_a_sidecar(good, text, expected):
    sidecar_path(good).write_text(text)
    msg = _one_line(str(pytest.raises(CheckpointError, read_metadata, good).value))
    assert msg.startswith(f"{sidecar_path(good)}: {expected}")


def test_truncated_and_binary_sidecars(good):
    side = sidecar_path(good)
    text = side.read_text()
    for cut in (1, len(text) // 3, len(text) - 2):
        side.write_text(text[:cut])
        msg = _one_line(str(pytest.raises(CheckpointError, read_metadata, good).value))
        assert msg.startswith(f"{side}: metadata is not valid JSON")
    side.write_bytes(b"\xff\xfe\x00garbage")
    msg = _one_line(str(pytest.raises(CheckpointError, read_metadata, good).value))
    assert msg.startswith(f"{side}: metadata is not valid JSON")


def test_unknown_keys_are_kept_for_forward_compatibility(good):
    side = sidecar_path(good)
    meta = json.loads(side.read_text())
    meta |= {"calibration": {"method": "temperature", "t": 1.3}, "future_field": [1, 2]}
    meta["patch"] = {"patch_size": 28, "stride": 28, "jitter": 2}
    side.write_text(json.dumps(meta))
    model, loaded = load_model(good, device="cpu")
    assert loaded["calibration"] == {"method": "temperature", "t": 1.3}
    assert loaded["patch"]["jitter"] == 2 and not model.training


def test_newer_format_version_says_update(good):
    side = sidecar_path(good)
    side.write_text(json.dumps(json.loads(side.read_text()) | {"format_version": 99}))
    with pytest.raises(CheckpointError, match=r"format 99 is newer .* update histoview"):
        read_metadata(good)


def test_bundled_weights_pass_the_schema():
    from histoview.models.library import bundled_weights_dir

    paths = sorted(bundled_weights_dir().glob("*.safetensors"))
    assert paths
    for path in paths:
        assert read_metadata(path)["model"]


def test_save_refuses_metadata_it_would_not_load(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match=r"m.json: refusing to save: field 'classes'"):
        save_checkpoint(path, create_model("amil"), {**META, "classes": "benign"})
    with pytest.raises(CheckpointError, match=r"field 'pixel_size_um'"):
        save_checkpoint(path, create_model("amil"), {**META, "pixel_size_um": -1.0})
    assert not path.exists() and not sidecar_path(path).exists()


# -- no pickle -----------------------------------------------------------------------------------
def test_pth_named_in_a_sidecar_is_refused(good, monkeypatch):
    monkeypatch.setattr(torch, "load", _no_torch_load)
    side = sidecar_path(good)
    for kwargs, field in (
        (
            {"patch_size": 28, "pretrained": "/tmp/evil.pth"},
            "field 'model_kwargs.pretrained': expected true, false or absent",
        ),
        (
            {"patch_size": 28, "weights": "backbone.pt"},
            "field 'model_kwargs': 'weights' names a pickle file",
        ),
    ):
        side.write_text(json.dumps(json.loads(side.read_text()) | {"model_kwargs": kwargs}))
        msg = _one_line(str(pytest.raises(CheckpointError, load_model, good, device="cpu").value))
        assert msg.startswith(f"{side}: {field}"), msg


def _no_torch_load(*args, **kwargs):
    raise AssertionError("torch.load was called")


def test_pth_as_checkpoint_or_pretrained_file_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "load", _no_torch_load)
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x04 not loaded")
    sidecar_path(pth).write_text(json.dumps({"format": "histoview-checkpoint", **META}))
    msg = _one_line(str(pytest.raises(CheckpointError, load_model, pth, device="cpu").value))
    assert msg == (
        f"{pth}: not a histoview checkpoint: checkpoints are .safetensors files "
        "with a .json sidecar (histoview never unpickles)"
    )
    # a training config's model_kwargs: pretrained weights must be safetensors
    with pytest.raises(ValueError, match=r"model.pth: pretrained weights must be a \.safetensors"):
        create_model("test_dalaresnet", pretrained=str(pth))
    code = main(["evaluate", str(pth), str(tmp_path), "--out", str(tmp_path / "ev")])
    assert code == 2 and "never unpickles" in _one_line(capsys.readouterr().err)


def test_no_code_path_calls_torch_load_or_pickle():
    """Static: histoview's sources never call torch.load or import pickle (torch.hub loads
    torchvision/timm's own hash-checked cache files, see models/pretrained.py)."""
    offenders = []
    pattern = re.compile(
        r"torch\.load\(|^\s*(import|from)\s+(c?pickle|dill|joblib)\b|"
        r"load_state_dict_from_url\(|allow_pickle\s*=\s*True",
        re.M,
    )
    for path in SRC.rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            line = path.read_text()[: match.start()].count("\n") + 1
            offenders.append(f"{path.relative_to(SRC)}:{line}: {match.group(0).strip()}")
    allowed = {"models/pretrained.py"}  # the one torch.hub cache load, checked by the next tests
    assert [o for o in offenders if o.split(":")[0] not in allowed] == []
    assert len([o for o in offenders if o.startswith("models/pretrained.py")]) == 1


# -- ImageNet weights from the cache, by name, hash-checked ------------------------------------
def _fake_imagenet(tmp_path, monkeypatch, *, good_hash: bool):
    """A resnet18 state_dict in a torch.hub cache under a URL's file name whose hash prefix
    matches the file (or not)."""
    import torchvision

    from histoview.models import pretrained

    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    tmp = hub / "download.tmp"
    torch.save(state, tmp)  # what torchvision's download is: a torch.save file
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    if not good_hash:
        digest = f"{int(digest, 16) ^ 1:08x}"
    cached = tmp.rename(hub / "checkpoints" / f"resnet18-{digest}.pth")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setattr(
        pretrained, "_imagenet_url", lambda arch: f"https://example.invalid/{cached.name}"
    )
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    return state, cached


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


def test_pretrained_true_loads_the_hash_checked_cache_file(tmp_path, monkeypatch):
    state, _ = _fake_imagenet(tmp_path, monkeypatch, good_hash=True)
    model = create_model("resnet18", pretrained=True)
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert model.head.out_features == 2


def test_pretrained_true_refuses_a_cache_file_with_the_wrong_hash(tmp_path, monkeypatch):
    _, cached = _fake_imagenet(tmp_path, monkeypatch, good_hash=False)
    with pytest.raises(RuntimeError, match=r"resnet18-.*\.pth: its SHA-256 .* does not match"):
        create_model("resnet18", pretrained=True)


def test_pretrained_true_without_cache_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    msg = str(pytest.raises(RuntimeError, create_model, "resnet18", pretrained=True).value)
    assert "not available offline" in msg and "resnet18-f37072fd.pth" in msg
    assert "pretrained='/path/to/resnet18.safetensors'" in msg and "\n" not in msg


def test_pretrained_safetensors_file_with_nan_is_refused(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "r18.safetensors"))
    with pytest.raises(RuntimeError, match=r"r18.safetensors: .*'layer1.0.conv1.weight' has 1 NaN"):
        create_model("test_dalaresnet", pretrained=tmp_path / "r18.safetensors")


# -- the model library ---------------------------------------------------------------------------
def test_library_lists_good_checkpoints_and_reports_skipped_ones(good):
    import shutil

    lib = user_library_dir(create=True)
    for name in ("fine", "no-model", "bad-json", "no-sidecar"):
        shutil.copy(good, lib / f"{name}.safetensors")
        shutil.copy(sidecar_path(good), lib / f"{name}.json")
    meta = json.loads((lib / "no-model.json").read_text())
    del meta["model"]
    (lib / "no-model.json").write_text(json.dumps(meta))
    (lib / "bad-json.json").write_text('{"format": "histoview-checkpoint", ')
    (lib / "no-sidecar.json").unlink()

    users = [e.name for e in list_checkpoints() if e.source == "user"]
    assert users == ["fine"]
    skipped = {s.name: s for s in skipped_checkpoints() if s.source == "user"}
    assert set(skipped) == {"no-model", "bad-json", "no-sidecar"}
    assert (
        skipped["no-model"].reason == f"{lib / 'no-model.json'}: field 'model' is missing "
        "(expected a registered model name)"
    )
    assert "not valid JSON" in skipped["bad-json"].reason
    assert "sidecar no-sidecar.json is missing" in skipped["no-sidecar"].reason
    assert all("\n" not in s.reason for s in skipped.values())
    # naming a skipped checkpoint gives its reason, not "no checkpoint named"
    from histoview.models.library import find_checkpoint

    with pytest.raises(CheckpointError, match=r"no-model.json: field 'model' is missing"):
        find_checkpoint("no-model")
