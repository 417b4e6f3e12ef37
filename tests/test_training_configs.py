"""Every recipe in training/ parses, names a registered model, and has valid options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoview.models import get_model_config
from histoview.training.config import load_config
from histoview.training.datasets import TASKS
from histoview.training.engine import TrainOptions

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training").glob("*.yaml"))


def test_there_are_recipes_for_every_paper():
    models = {load_config(p)["model"] for p in CONFIGS}
    assert {
        "amil",
        "rsf",
        "rsf-attention",
        "cspresnet50_fpn_se",
        "dalaresnet50",
        "customnet",
        "rmcg",
    } <= models


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_is_valid(path):
    cfg = load_config(path)
    get_model_config(cfg["model"])
    TrainOptions.from_dict(cfg.get("train", {}))
    data = cfg["data"]
    assert data.get("task", "folder") in TASKS[data["type"]]
    assert Path(cfg["output_dir"]).is_absolute()


def test_cspresnet50_fpn_se_and_dalaresnet50_recipes_follow_the_papers():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    csp = by_name["cspresnet50-fpn-se-breakhis-bin-all"]["train"]
    assert csp["freeze_backbone_epochs"] > 0 and csp["backbone_lr_scale"] < 1
    assert csp["loss"] == "focal" and csp["label_smoothing"] > 0 and csp["mixup_alpha"] > 0
    assert csp["warmup_epochs"] > 0 and csp["schedule"] == "cosine" and csp["amp"]
    dala = by_name["dalaresnet50-breakhis"]["train"]
    assert (dala["batch_size"], dala["lr"], dala["epochs"]) == (32, 1e-4, 50)
    tasks = {
        (c["data"]["task"], c["data"].get("magnification", "all"))
        for n, c in by_name.items()
        if n.startswith("cspresnet50")
    }
    assert tasks == {(t, m) for t in ("binary", "subtype") for m in ("all", 40, 100, 200, 400)}


# -- the schema: every mistake is one line naming the file, the key and the reason ----------
def test_every_shipped_recipe_validates_by_name(tmp_path, monkeypatch):
    from histoview.training.recipes import list_recipes

    monkeypatch.chdir(tmp_path)
    names = list_recipes()
    assert len(names) == len(CONFIGS) >= 20
    for name in names:
        cfg = load_config(name)  # the schema, through the installed recipes package
        assert cfg["output_dir"] == str(tmp_path / "runs" / cfg["name"])


def _base(**sections):
    cfg = {
        "model": "test_cnn",
        "data": {"type": "phantom", "task": "binary", "n_per_class": 4},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
    }
    for key, value in sections.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section] = {**cfg.get(section, {}), field: value}
        else:
            cfg[section] = value
    return cfg


BAD = {  # config edits -> the line the user reads (after "bad.yaml: ")
    "unknown data key": (
        {"data__n_per_clas": 3},
        "field 'data.n_per_clas' is not a key of section 'data'; did you mean 'n_per_class'?",
    ),
    "unknown split key": (
        {"split__fraction": [1, 0, 0]},
        "field 'split.fraction' is not a key of section 'split'; did you mean 'fractions'?",
    ),
    "unknown train key": (
        {"train__epoch": 3},
        "field 'train.epoch' is not a key of section 'train'; did you mean 'epochs'?",
    ),
    "unknown input key": (
        {"input__max_backgrond": 0.5},
        "field 'input.max_backgrond' is not a key of section 'input'; did you mean "
        "'max_background'?",
    ),
    "unknown section": (
        {"trian": {}},
        "field 'trian' is not a key of a training config; did you mean 'train'?",
    ),
    "unknown key, nothing close": (
        {"split__zzz": 1},
        "field 'split.zzz' is not a key of section 'split' (known: by, fractions, seed, test_patients, val_patients)",
    ),
    "epochs as words": (
        {"train__epochs": "ten"},
        "field 'train.epochs': expected a whole number >= 1, got 'ten'",
    ),
    "epochs as a string number": (
        {"train__epochs": "10"},
        "field 'train.epochs': expected a whole number >= 1, got '10'",
    ),
    "zero batch": (
        {"train__batch_size": 0},
        "field 'train.batch_size': expected a whole number >= 1, got 0",
    ),
    "fractional batch": (
        {"train__batch_size": 2.5},
        "field 'train.batch_size': expected a whole number >= 1, got 2.5",
    ),
    "negative lr": ({"train__lr": -0.1}, "field 'train.lr': expected a positive finite number"),
    "nan lr": ({"train__lr": float("nan")}, "field 'train.lr': expected a positive finite number"),
    "amp as 1": ({"train__amp": 1}, "field 'train.amp': expected true or false, got 1"),
    "optimizer typo": (
        {"train__optimizer": "adamm"},
        "field 'train.optimizer': expected one of 'adam', 'adamw', 'sgd', got 'adamm'; "
        "did you mean 'adam'?",
    ),
    "monitor typo": (
        {"train__monitor": "balanced_acc"},
        "did you mean 'balanced_accuracy'?",
    ),
    "schedule typo": ({"train__schedule": "cosin"}, "did you mean 'cosine'?"),
    "device typo": (
        {"train__device": "gpu"},
        "field 'train.device': expected 'cpu', 'cuda', 'cuda:N' or 'mps'",
    ),
    "negative workers": (
        {"train__num_workers": -1},
        "field 'train.num_workers': expected a whole number >= 0, got -1",
    ),
    "fractions over 1": (
        {"split__fractions": [0.5, 0.25, 0.5]},
        "field 'split.fractions': train, validation and test fractions must add up to 1, got "
        "[0.5, 0.25, 0.5] (sum 1.25)",
    ),
    "negative fraction": (
        {"split__fractions": [1.2, -0.2, 0.0]},
        "field 'split.fractions': expected three fractions in [0, 1]",
    ),
    "two fractions": (
        {"split__fractions": [0.8, 0.2]},
        "field 'split.fractions': expected three fractions in [0, 1]",
    ),
    "empty training split": (
        {"split__fractions": [0.0, 0.5, 0.5]},
        "field 'split.fractions': the training fraction must be above 0",
    ),
    "split by typo": ({"split__by": "patients"}, "did you mean 'patient'?"),
    "phantom count zero": (
        {"data__n_per_class": 0},
        "field 'data.n_per_class': expected a whole number of images >= 1, got 0",
    ),
    "phantom task": (
        {"data__task": "subtype"},
        "field 'data.task': expected one of 'binary', 'in_situ_vs_invasive', '3class', got "
        "'subtype'",
    ),
    "phantom preset typo": ({"data__preset": "bachh"}, "did you mean 'bach'?"),
    "data type typo": ({"data": {"type": "phantoms"}}, "did you mean 'phantom'?"),
    "data without root": (
        {"data": {"type": "breakhis"}},
        "field 'data.root' is missing (expected a dataset folder path)",
    ),
    "magnification": (
        {"data": {"type": "breakhis", "root": "x", "magnification": 50}},
        "field 'data.magnification': expected 40, 100, 200, 400 or 'all' (BreakHis), got 50",
    ),
    "model typo": ({"model": "amill"}, "field 'model': expected a registered model"),
    "missing model": ({"model": None}, "field 'model'"),
    "input of another kind": (
        {"input__stride": 28},
        "field 'input.stride' applies to bag models, not to image model 'test_cnn'",
    ),
    "dropout of 1": (
        {"model": "amil", "input__instance_dropout": 1.0},
        "field 'input.instance_dropout': expected a fraction in [0, 1), got 1.0",
    ),
    "pickle weights": ({"model_kwargs": {"pretrained": "resnet.pth"}}, "never unpickles"),
    "section not a mapping": ({"train": [1, 2]}, "field 'train': expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_bad_configs_say_file_key_and_reason_in_one_line(case, tmp_path):
    import yaml

    from histoview.training.schema import ConfigError

    edits, expected = BAD[case]
    cfg = _base(**edits)
    if cfg["model"] is None:
        del cfg["model"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message


def test_histoview_train_on_a_bad_config_exits_2_with_one_line(tmp_path, capsys):
    from histoview.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(
        f"model: test_cnn\ndata: {{type: phantom, n_per_clas: 3}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"histoview train: error: {path}: field 'data.n_per_clas' is not a key of section "
        "'data'; did you mean 'n_per_class'?"
    )
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_values_are_read_as_the_user_meant():
    from histoview.training.config import validate_config

    cfg = _base(train__lr="1e-4", train__num_workers=np.int64(2), split__fractions=(0.6, 0.2, 0.2))
    out = validate_config(cfg)
    assert out["train"]["lr"] == 1e-4 and isinstance(out["train"]["lr"], float)  # PyYAML: a str
    assert out["train"]["num_workers"] == 2 and type(out["train"]["num_workers"]) is int
    assert out["split"]["fractions"] == [0.6, 0.2, 0.2]
    assert set(out["train"]) == {"epochs", "batch_size", "device", "lr", "num_workers"}
    assert validate_config(out) == out  # validating again changes nothing
    with pytest.raises(ValueError, match="train.lr"):
        validate_config(_base(train__lr="1e-4x"))


def test_toml_configs_use_the_same_schema(tmp_path):
    from histoview.training.schema import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text('model = "test_cnn"\n[data]\ntype = "phantom"\n[train]\nbatch_sise = 4\n')
    with pytest.raises(ConfigError, match=r"bad.toml: field 'train.batch_sise' .*'batch_size'"):
        load_config(path)


def test_an_unknown_model_argument_is_named_with_a_suggestion(tmp_path):
    from histoview.training.run import train_from_config
    from histoview.training.schema import ConfigError

    cfg = _base(model="amil", model_kwargs={"patch_sise": 28}, output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError) as info:
        train_from_config(cfg, source="amil.yaml")
    assert str(info.value) == (
        "amil.yaml: field 'model_kwargs.patch_sise' is not an argument of model 'amil'; "
        "did you mean 'patch_size'?"
    )


@pytest.mark.parametrize("model", ["amil", "test_cnn", "rsf-attention", "cspresnet50_fpn_se"])
@pytest.mark.parametrize("layout", ["phantom", "breakhis", "bach", "folder"])
def test_the_training_docks_configs_validate(model, layout, tmp_path):
    """The dict the training dock builds (viewer._train_widget.TrainWidget.build_config):
    the recipe's sections, the data spec of the layout, the shown options and a device."""
    from histoview.training.config import validate_config
    from histoview.training.datasets import TASKS
    from histoview.training.recipes import recipe_for

    r = recipe_for(model, layout)
    data = (
        {"type": "phantom", "task": "binary", "n_per_class": 20, "preset": "breakhis", "seed": 0}
        if layout == "phantom"
        else {"type": layout, "root": str(tmp_path), "task": TASKS[layout][0]}
    )
    if layout == "breakhis":
        data["magnification"] = "100"  # the dock's combo box gives text
    train = {**r["train"], "epochs": 3, "batch_size": 4, "lr": 0.001, "device": "cpu"}
    cfg = {
        "name": f"{model}-{layout}",
        "model": model,
        "model_kwargs": dict(r["model_kwargs"]),
        "data": data,
        "split": dict(r["split"]),
        "input": dict(r["input"]),
        "train": train,
        "output_dir": str(tmp_path / "run"),
    }
    assert validate_config(cfg)["train"] == train
