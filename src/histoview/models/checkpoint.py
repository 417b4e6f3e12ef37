"""Checkpoints: safetensors weights plus a JSON sidecar. Nothing is ever unpickled.

A checkpoint ``NAME.safetensors`` has its description in ``NAME.json``::

    {
      "format": "histoview-checkpoint", "format_version": 1,
      "model": "amil", "model_kwargs": {...},        # registry name and factory kwargs
      "classes": ["benign", "malignant"],
      "patch": {...} | null,                         # patch settings for bag models
      "pixel_size_um": 0.5 | null,                   # resolution the model was trained at
      "normalisation": {"mean": [...], "std": [...]},
      "metrics": {...}, "data": {...},               # validation/test metrics, training data
      "code_version": "0.1.0", "created": "2026-...",
      "synthetic": false, "notice": "...",           # demo weights trained on phantoms say so
      "weights_sha256": "..."
    }

Loading checks the sidecar against its schema (:mod:`histoview.models.sidecar`: types,
a registered model, distinct classes, positive sizes; unknown keys are kept), the
weights' hash, that every floating tensor is finite (no NaN or infinity) and that every
tensor name and shape matches the model the sidecar describes; any problem raises
:class:`CheckpointError` with one line naming the file and the problem. Saving refuses
the same problems, so histoview never writes a checkpoint it would not load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from histoview.io.files import write_bytes

FORMAT = "histoview-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt or not matching its model."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, model, meta: dict[str, Any]) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) and ``meta`` to the sidecar.

    ``meta`` must hold at least ``model`` (registry name) and ``classes``.
    Both files are written atomically (temporary file, then rename), the
    weights first, so a run killed mid-save leaves the previous checkpoint whole.
    """
    from safetensors.torch import save

    import histoview

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoint files must end in .safetensors")
    for key in ("model", "classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata needs {key!r}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if bad := non_finite_tensors(state):
        raise CheckpointError(f"{path}: refusing to save {_non_finite_message(bad)}")
    data = save(state, metadata={"format": FORMAT})
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "code_version": histoview.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **meta,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    text = json.dumps(full, indent=2, default=_json_default)
    if problem := _sidecar_problem(json.loads(text)):  # what a reader will see
        raise CheckpointError(f"{sidecar_path(path)}: refusing to save: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data, overwrite=True)
    write_bytes(sidecar_path(path), text.encode(), overwrite=True)
    return path


def _json_default(obj: Any) -> Any:
    return json_default(obj, what="checkpoint metadata")


def json_default(obj: Any, *, what: str = "checkpoint metadata") -> Any:
    """``json.dumps(default=...)`` for what training stores: NumPy scalars and arrays,
    tuples and sets as lists, paths as text; TypeError names ``what`` it was for."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in {what}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's JSON sidecar and check it against the schema (the weights are
    not read). Returns the sidecar as parsed; CheckpointError names the file and field."""
    path = Path(path)
    side = sidecar_path(path)
    if path.suffix != ".safetensors":
        from histoview.models.sidecar import PICKLE_SUFFIXES

        what = " (histoview never unpickles)" if path.suffix.lower() in PICKLE_SUFFIXES else ""
        raise CheckpointError(
            f"{path}: not a histoview checkpoint: checkpoints are .safetensors files with a "
            f".json sidecar{what}"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint weights not found")
    if not side.is_file():
        raise CheckpointError(f"{path}: its metadata sidecar {side.name} is missing")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{side}: not a histoview checkpoint sidecar")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{side}: checkpoint format {version} is newer than this histoview "
            f"understands ({FORMAT_VERSION}); update histoview"
        )
    if problem := _sidecar_problem(meta):
        raise CheckpointError(f"{side}: {problem}")
    return meta


def _sidecar_problem(meta: dict[str, Any]) -> str | None:
    from histoview.models.sidecar import sidecar_problem  # pydantic: imported when needed

    return sidecar_problem(meta)


def non_finite_tensors(state: Mapping[str, Any]) -> list[tuple[str, int, int, int]]:
    """``(name, NaN count, infinite count, size)`` of every floating (or complex) tensor of
    ``state`` that holds NaN or +-inf, in ``state``'s order; integer tensors are skipped."""
    import torch

    bad = []
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        # fast test: NaN and +-inf propagate through a sum (float32 or narrower weights
        # cannot overflow a float64 sum); count only when it fails
        acc = torch.complex128 if tensor.is_complex() else torch.float64
        if bool(torch.isfinite(tensor.sum(dtype=acc))):
            continue
        non_finite = tensor.numel() - int(torch.isfinite(tensor).sum())
        if non_finite:  # (huge finite float64 values can overflow the sum: not a problem)
            nan = int(torch.isnan(tensor).sum())
            bad.append((name, nan, non_finite - nan, tensor.numel()))
    return bad


def _non_finite_message(bad: list[tuple[str, int, int, int]]) -> str:
    name, nan, inf, size = bad[0]
    more = f" ({len(bad)} tensors affected)" if len(bad) > 1 else ""
    return (
        f"non-finite weights: tensor {name!r} has {nan} NaN and {inf} infinite values of "
        f"{size}{more}; the training diverged or the file was altered"
    )


def load_state_dict(
    path: str | os.PathLike, *, verify_hash: bool = True
) -> tuple[dict, dict[str, Any]]:
    """Load weights (safetensors, never pickle) and metadata; checks the sidecar, the hash
    and that every floating tensor is finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    meta = read_metadata(path)
    data = path.read_bytes()
    if verify_hash and meta.get("weights_sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise CheckpointError(
            f"{path}: weights do not match the hash in {sidecar_path(path).name} "
            "(corrupted or replaced)"
        )
    try:
        state = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors weights ({exc})") from None
    if bad := non_finite_tensors(state):
        raise CheckpointError(f"{path}: {_non_finite_message(bad)}")
    return state, meta


def check_state_dict(model, state: dict, source: str) -> None:
    """Raise CheckpointError unless ``state`` has exactly the model's tensor names and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"shape mismatch in {len(wrong)} tensors (e.g. {wrong[:3]})")
        name = getattr(getattr(model, "model_config", None), "name", type(model).__name__)
        raise CheckpointError(
            f"{source}: checkpoint does not match model {name!r}: " + "; ".join(parts)
        )


def load_model(
    path: str | os.PathLike, *, device: str | None = None, model_name: str | None = None
):
    """Build the model a checkpoint describes and load its weights.

    Args:
        path: the ``.safetensors`` file (its ``.json`` sidecar beside it).
        device: where to put the model; default CUDA when present, else CPU.
        model_name: if given, the checkpoint must be for this registry name.

    Returns:
        ``(model, meta)`` with the model in eval mode.
    """
    from histoview.models.registry import create_model

    state, meta = load_state_dict(path)
    name = meta["model"]
    if model_name is not None and name != model_name:
        raise CheckpointError(f"{path}: checkpoint is for model {name!r}, not {model_name!r}")
    # the checkpoint holds every weight: no ImageNet initialisation to look for first
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k != "pretrained"}
    try:
        model = create_model(name, num_classes=len(meta["classes"]), **kwargs)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        reason = " ".join(str(text).split())
        raise CheckpointError(
            f"{path}: cannot build model {name!r} from its metadata ({reason})"
        ) from None
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    model.eval()
    return model.to(device or default_device()), meta


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
