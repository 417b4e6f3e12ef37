"""Training configurations: YAML or TOML files (examples in the repository's ``training/``).

A config names the model, the data, the split and the training options::

    name: amil-phantom              # run name
    model: amil                     # registry name
    model_kwargs: {patch_size: 28}  # factory arguments (stored in the checkpoint)
    data: {type: phantom, task: binary, n_per_class: 40}   # see training.datasets
    split: {by: patient, fractions: [0.7, 0.15, 0.15], seed: 0}
    input: {max_background: 0.9}    # adapter options (patch stride, graph threshold, cache dir...)
    stain: {method: macenko, reference: training-set}  # or an image file; stored in the checkpoint
    augment: {hed_jitter: 0.05}     # HED stain jitter while training (bag and image models)
    train: {epochs: 10, batch_size: 1, lr: 0.001, num_workers: 0}  # training.engine.TrainOptions
    output_dir: runs/amil-phantom   # relative paths are relative to the config file

``train: {num_workers: n}`` reads and augments samples in ``n`` data-loader worker processes
(default 0: on the training thread); the trained weights do not depend on it
(:mod:`histoview.training.loader`).

Every config is checked against one schema (:mod:`histoview.training.schema`): an unknown
key (with the closest known one as a suggestion), a wrong type or an impossible value
raises :class:`~histoview.training.schema.ConfigError`, one line naming the file, the key
and the reason (``histoview train`` prints it and exits with status 2).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import yaml

from histoview.training.schema import TRAINING_SET, validate_training_config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) training config and check its sections.

    ``path`` may also name a shipped recipe (``amil-phantom``, see
    :func:`histoview.training.recipes.list_recipes`); its relative paths (``output_dir``)
    are then relative to the current folder, never to the installed package.
    """
    path = Path(path)
    if not path.is_file() and path.suffix in ("", ".yaml") and len(path.parts) == 1:
        from histoview.training.recipes import recipe_dir_path, recipe_path

        recipe = recipe_path(path.name)
        config = yaml.safe_load(recipe.read_text())
        if isinstance(config, dict):  # outputs go to ./runs/<name>, not into the package
            name = config.get("name") or recipe.name.removesuffix(".yaml")
            config["output_dir"] = str(Path.cwd() / "runs" / name)
        return validate_config(
            config, base_dir=str(recipe_dir_path()), source=f"recipe {recipe.name}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            config = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            config = yaml.safe_load(text)
        else:
            raise ValueError(f"{path}: config must be .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse config ({exc})") from None
    return validate_config(config, base_dir=path.parent, source=str(path))


def validate_config(
    config: Any, *, base_dir: str | os.PathLike = ".", source: str = "config"
) -> dict[str, Any]:
    """Check ``config`` against the schema (:func:`~histoview.training.schema.
    validate_training_config`: ConfigError names ``source``, the key and the problem) and
    return a copy with absolute paths: ``data.root`` and a ``stain.reference`` image (``~``
    and ``$VARS`` expanded) and ``output_dir`` (default ``runs/<name or model>``) relative to
    ``base_dir``; ``name`` defaults to the output folder's name. Validating a validated config changes nothing."""
    config = validate_training_config(config, source=source)
    base = Path(base_dir)
    data = dict(config["data"])
    if "root" in data:
        root = Path(os.path.expandvars(str(data["root"]))).expanduser()
        data["root"] = str(root if root.is_absolute() else (base / root).resolve())
    config["data"] = data
    stain = config.get("stain")
    if isinstance(stain, dict) and stain.get("reference") not in (None, TRAINING_SET):
        ref = Path(os.path.expandvars(str(stain["reference"]))).expanduser()
        stain = {**stain, "reference": str(ref if ref.is_absolute() else (base / ref).resolve())}
        config["stain"] = stain
    out = Path(config.get("output_dir") or f"runs/{config.get('name', config['model'])}")
    config["output_dir"] = str(out if out.is_absolute() else (base / out).resolve())
    config.setdefault("name", Path(config["output_dir"]).name)
    return config


def check_processes(config: dict[str, Any], processes: int, source: str) -> None:
    """Refuse ``processes`` training processes where the config cannot use them: fewer than
    one, or more than one for an A-MIL head on cached slide features (one process reads the
    cache). The CLI checks before it starts any process; a run torchrun started is checked
    by the run itself."""
    if processes < 1:
        raise ValueError(f"--nproc must be at least 1, got {processes}")
    if processes > 1 and (config.get("data") or {}).get("type") == "slide_features":
        raise ValueError(f"{source}: a slide_features run trains in one process (no --nproc)")
