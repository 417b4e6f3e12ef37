"""Every recipe in training/ parses, names a registered model, and has valid options."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoview.models import get_model_config
from histoview.training.config import load_config
from histoview.training.datasets import TASKS
from histoview.training.engine import TrainOptions

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training").glob("*.yaml"))


def test_there_are_recipes_for_every_paper():
    models = {load_config(p)["model"] for p in CONFIGS}
    assert {"amil", "rsf", "rsf-attention", "cspresnet50_fpn_se", "dalaresnet50", "customnet", "rmcg"} <= models


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
    tasks = {(c["data"]["task"], c["data"].get("magnification", "all"))
             for n, c in by_name.items() if n.startswith("cspresnet50")}
    assert tasks == {(t, m) for t in ("binary", "subtype") for m in ("all", 40, 100, 200, 400)}
