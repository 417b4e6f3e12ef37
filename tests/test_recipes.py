"""Default training settings per model come from the core, the same in a checkout and a wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoview.training.engine import TrainOptions
from histoview.training.recipes import BUILTIN_RECIPES, SHOWN_OPTIONS, recipe_dir, recipe_for

TRAINING = Path(__file__).resolve().parents[1] / "training"


def test_recipes_are_the_package_histoview_recipes():
    # in this (editable) install the package is the repository's training/ folder itself
    names = {p.name for p in recipe_dir().iterdir()}
    assert {p.name for p in TRAINING.glob("*.yaml")} <= names
    assert Path(str(recipe_dir())).resolve() == TRAINING.resolve()


def test_a_recipe_wins_by_layout_then_phantom():
    assert recipe_for("amil", "breakhis")["source"] == "recipe training/amil-breakhis.yaml"
    assert recipe_for("amil", "phantom")["source"] == "recipe training/amil-phantom.yaml"
    # real data without a recipe of its own: the paper's settings, not the phantom recipe
    assert recipe_for("amil", "folder")["source"].startswith("built-in defaults, A-MIL")
    assert recipe_for("customnet", "breakhis")["source"].startswith("built-in defaults, customNet")
    assert recipe_for("customnet", None)["source"] == "recipe training/customnet-phantom.yaml"
    # file names spell the model's "_" as "-"; the data's task and magnification pick one
    csp = "recipe training/cspresnet50-fpn-se-breakhis-"
    assert (
        recipe_for("cspresnet50_fpn_se", "breakhis", task="binary", magnification="all")["source"]
        == csp + "bin-all.yaml"
    )
    assert (
        recipe_for("cspresnet50_fpn_se", "breakhis", task="subtype", magnification=40)["source"]
        == csp + "mc-40.yaml"
    )
    assert recipe_for("rsf-attention", "phantom")["source"] == (
        "recipe training/rsf-attention-phantom.yaml"
    )
    assert recipe_for("rsf-attention", "phantom", task="in_situ_vs_invasive")["source"] == (
        "recipe training/rsf-attention-phantom-in-situ-vs-invasive.yaml"
    )
    assert recipe_for("rsf", "bach")["source"] == "recipe training/rsf-bach.yaml"
    assert recipe_for("rsf", "bach")["input"]["graph_threshold_um"] == 42.0
    # rsf-*.yaml also matches rsf-attention-*.yaml: the config's model decides
    assert recipe_for("rsf", "phantom")["source"] == "recipe training/rsf-bach.yaml"


def test_builtin_table_without_a_recipe(tmp_path):
    r = recipe_for("cspresnet50_fpn_se", folder=tmp_path)
    assert r["source"].startswith("built-in defaults") and r["train"]["loss"] == "focal"
    assert recipe_for("amil", "folder", folder=tmp_path)["train"]["batch_size"] == 1
    # RSF+Attention trains sparse sigmoid gates, from its recipe and built in alike
    for folder in (None, tmp_path):
        kwargs = recipe_for("rsf-attention", "phantom", folder=folder)["model_kwargs"]
        assert kwargs["attention_gate"] == "sigmoid" and kwargs["attention_sparsity"] > 0
    unknown = recipe_for("no-such-model", folder=tmp_path)
    assert unknown["source"] == "built-in defaults, histoview defaults"
    # the returned dicts are copies: editing one leaves the table alone
    recipe_for("amil", folder=tmp_path)["train"]["epochs"] = -1
    assert BUILTIN_RECIPES["amil"][0]["epochs"] == 20


@pytest.mark.parametrize("model", sorted(BUILTIN_RECIPES))
def test_every_builtin_recipe_is_valid(model):
    from histoview.models import get_model_config

    get_model_config(model)
    train = recipe_for(model, folder=Path("/nonexistent"))["train"]
    TrainOptions.from_dict(train)
    assert set(SHOWN_OPTIONS) <= set(train)


def test_a_recipe_without_shown_options_reports_what_training_uses(tmp_path):
    (tmp_path / "amil-phantom.yaml").write_text(
        "model: amil\ndata: {type: phantom}\ntrain: {weight_decay: 0.001}\n"
    )
    (tmp_path / "amil-broken.yaml").write_text("model: [amil\n")  # unparsable: skipped
    train = recipe_for("amil", folder=tmp_path)["train"]
    defaults = TrainOptions()
    assert train == {
        "weight_decay": 0.001,
        "epochs": defaults.epochs,
        "batch_size": defaults.batch_size,
        "lr": defaults.lr,
    }


def test_train_takes_a_shipped_recipe_by_name_and_writes_under_the_current_folder(
    tmp_path, monkeypatch
):
    from histoview.training.config import load_config
    from histoview.training.recipes import list_recipes

    monkeypatch.chdir(tmp_path)
    assert "amil-phantom" in list_recipes()
    config = load_config("amil-phantom")
    assert config["model"] == "amil"
    assert config["output_dir"] == str(tmp_path / "runs" / "amil-phantom")
    with pytest.raises(ValueError, match="neither a config file nor a shipped recipe"):
        load_config("no-such-recipe")
