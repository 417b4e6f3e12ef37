"""Default training settings per model: the shipped recipes, then a built-in table.

The recipes are the YAML training configs of the repository's ``training/`` folder. pyproject.toml
maps that folder to the package ``histoview.recipes``, so a wheel ships them and an editable
install reads them in place; :func:`recipe_dir` finds them through ``importlib.resources`` either
way, and a wheel and a checkout start a model from the same values. :data:`BUILTIN_RECIPES`
covers models without a recipe, with the settings of the papers in ``docs/citations.md``.
The training dock (``histoview.viewer._train_widget``) takes its starting values from
:func:`recipe_for`.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

_ADAM_1E3_B1 = {"epochs": 20, "batch_size": 1, "lr": 1e-3, "optimizer": "adam"}
_LIU2023 = {"epochs": 50, "batch_size": 32, "lr": 1e-4, "optimizer": "adam"}
_GRAPH = {"epochs": 100, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4}
_GRAPH_INPUT = {"graph_threshold_um": 42.0, "pixel_size_um": 0.42}
_RSF_ATTENTION = {
    "attention_gate": "sigmoid",
    "attention_sparsity": 3.0,
    "attention_input": "morphology",
}
#: CSPResNet50-FPN-SE's training recipe (two-phase fine-tuning, focal loss, MixUp, cosine)
CSP_TRAIN = {
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "loss": "focal",
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "warmup_epochs": 1,
    "schedule": "cosine",
    "freeze_backbone_epochs": 5,
    "backbone_lr_scale": 0.1,
    "tta": True,
}

#: model -> (train options, model kwargs, input options, where the values come from)
BUILTIN_RECIPES: dict[str, tuple[dict, dict, dict, str]] = {
    **{
        m: (
            _ADAM_1E3_B1,
            {"patch_size": 28},
            {},
            "A-MIL (Patil et al., 2019): batch 1, lr 0.001, Adam",
        )
        for m in ("amil", "amil-gated")
    },
    "customnet": (
        {"epochs": 20, "batch_size": 16, "lr": 1e-3, "optimizer": "adam"},
        {},
        {},
        "customNet (Patil et al., 2019, Table III)",
    ),
    **{
        m: (_LIU2023, {}, {}, "DALAResNet50 (Liu et al., 2023): batch 32, lr 0.0001, 50 epochs")
        for m in ("resnet18", "resnet50", "vgg16", "dalaresnet50")
    },
    "cspresnet50_fpn_se": (
        CSP_TRAIN,
        {},
        {},
        "CSPResNet50-FPN-SE: two-phase fine-tuning, focal loss, MixUp, cosine decay",
    ),
    "rmcg": (
        {"epochs": 30, "batch_size": 16, "lr": 1e-4, "optimizer": "adam", "weight_decay": 1e-4},
        {},
        {},
        "RMCG",
    ),
    **{
        m: (_GRAPH, {}, _GRAPH_INPUT, "nuclei graphs (Sureka et al., 2020): batch 8, lr 0.001")
        for m in ("rsf", "rsf-edge")
    },
    "rsf-attention": (
        _GRAPH,
        _RSF_ATTENTION,
        _GRAPH_INPUT,
        "nuclei graphs (Sureka et al., 2020): batch 8, lr 0.001; sparse sigmoid attention gates",
    ),
}
_FALLBACK = ({"epochs": 10, "batch_size": 8, "lr": 1e-3}, {}, {}, "histoview defaults")
#: the settings the training dock shows for every model; a recipe that omits one trains with
#: :class:`~histoview.training.engine.TrainOptions`' default, so that is what it reports.
SHOWN_OPTIONS = ("epochs", "batch_size", "lr")


def recipe_dir() -> Traversable:
    """The shipped recipes: package ``histoview.recipes`` (the repository's ``training/``)."""
    return files("histoview.recipes")


def recipe_for(
    model: str,
    layout: str | None = None,
    folder: Traversable | None = None,
    *,
    task: str | None = None,
    magnification: str | int | None = None,
) -> dict[str, Any]:
    """Starting values for ``model``: ``{"train", "model_kwargs", "input", "split", "source"}``.

    Looks in ``folder`` (default :func:`recipe_dir`) for ``<model>-*.yaml`` configs (``_`` in
    the model's name may be ``-`` in the file's) whose ``model`` is ``model``. A recipe for
    ``layout`` (``<model>-<layout>.yaml``, or its ``data.type`` is ``layout``) wins, the one
    whose data ``task`` and ``magnification`` match first; then, for synthetic phantoms or no
    layout, ``<model>-phantom.yaml``, then the first by name. Real data (``breakhis``,
    ``bach``, ``folder``) without a recipe of its own starts from :data:`BUILTIN_RECIPES` (the
    papers' settings), never from a recipe tuned on phantoms; a model missing there takes
    its recipes as above, else histoview's defaults.
    ``train`` always holds :data:`SHOWN_OPTIONS`; ``source`` says where the values came from.
    """
    import yaml

    folder = recipe_dir() if folder is None else folder
    found: list[tuple[tuple[int, bool, bool, bool], str, dict]] = []
    prefixes = (f"{model}-", f"{model.replace('_', '-')}-")
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for name in names:
        if not (name.startswith(prefixes) and name.endswith(".yaml")):
            continue
        try:
            cfg = yaml.safe_load((folder / name).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(cfg, dict) or cfg.get("model") != model:
            continue  # rsf-*.yaml also matches rsf-attention-*.yaml
        stem = name.removesuffix(".yaml")
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        named = bool(layout) and stem in (f"{m}{layout}" for m in prefixes)
        phantom = stem in (f"{m}phantom" for m in prefixes)
        rank = (
            0
            if named or (layout and data.get("type") == layout)
            else 1
            if (phantom or data.get("type") == "phantom")
            else 2
        )
        fit = (
            rank,
            task is not None and data.get("task") != task,
            magnification is not None and _mag(data.get("magnification")) != _mag(magnification),
            not (named or phantom),
        )  # then <model>-<layout>.yaml, <model>-phantom.yaml
        found.append((fit, name, cfg))
    real = layout not in (None, "phantom")
    if found and real and model in BUILTIN_RECIPES and min(f[0][0] for f in found) > 0:
        found = []  # real data: the papers' settings rather than another layout's recipe
    if found:
        _, name, cfg = min(found, key=lambda t: (t[0], t[1]))
        train = dict(cfg.get("train") or {})
        missing = [k for k in SHOWN_OPTIONS if k not in train]
        if missing:
            from histoview.training.engine import TrainOptions

            train.update({k: getattr(TrainOptions, k) for k in missing})
        return {
            "train": train,
            "model_kwargs": dict(cfg.get("model_kwargs") or {}),
            "input": dict(cfg.get("input") or {}),
            "split": dict(cfg.get("split") or {}),
            "source": f"recipe training/{name}",
        }
    train, kwargs, inputs, source = BUILTIN_RECIPES.get(model, _FALLBACK)
    return {
        "train": dict(train),
        "model_kwargs": dict(kwargs),
        "input": dict(inputs),
        "split": {},
        "source": f"built-in defaults, {source}",
    }


def _mag(value) -> str:
    """A magnification as the data spec writes it: ``"all"`` or digits (``100X`` -> ``100``)."""
    text = "all" if value in (None, "", "all") else str(value).rstrip("xX")
    return text.lower()


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``histoview train NAME`` takes them)."""
    folder = recipe_dir()
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def recipe_path(name: str) -> Traversable:
    """The shipped recipe called ``name`` (with or without ``.yaml``); ValueError lists them."""
    stem = name.removesuffix(".yaml")
    if stem not in list_recipes():
        raise ValueError(
            f"{name!r} is neither a config file nor a shipped recipe; recipes: "
            + ", ".join(list_recipes())
        )
    return recipe_dir() / f"{stem}.yaml"


def recipe_dir_path():
    """The shipped recipes' folder as a path (data roots in recipes are relative to it)."""
    from pathlib import Path

    return Path(str(recipe_dir()))
