"""A run's resume state: one file per finished epoch, written whole or not at all.

After each epoch the engine (:func:`histoview.training.engine.fit`) writes, in this order:

1. ``last.safetensors`` / ``last.json``, the model after the epoch
   (:func:`histoview.models.checkpoint.save_checkpoint`, which refuses metadata or weights
   it would not load, before anything commits the epoch);
2. ``train_state.safetensors``: the **resume unit**, one safetensors file holding the model's
   weights (``model.<name>``), the optimizer's tensors (``optimizer.<index>.<name>``) and, in
   its header, the record: epoch, history, best score and epoch, the optimizer's parameter
   groups and scalars, the checkpoint metadata of that epoch, and a SHA-256 of the tensors.
   It is one file written through :func:`histoview.io.files.write_bytes` (temporary file,
   fsync, rename), so a kill at any instant leaves the previous unit or the new one, never
   a mixture; the previous one stays as ``train_state.prev.safetensors`` (a hard link: no
   copy) in case the newest is damaged later. ``train_state.json`` is a readable copy of
   the record (epoch, history), for people and the training dock; it is never read back;
3. ``best.safetensors`` / ``best.json`` when the epoch is the best so far.

Resuming reads only the unit: the epoch it names is the last complete one.
A kill between the two files of a checkpoint pair leaves weights that do not match their
sidecar, and a kill after ``last`` but before the unit leaves ``last`` one epoch ahead;
resuming (:func:`load_resume_state`, then :func:`repair_checkpoints`) restores the
model and optimizer from the newest unit that verifies (else the previous one), rewrites
``last`` (and ``best``, when that epoch was the best) from it where they do not match, and
removes the temporary files that a kill during a write leaves behind
(:func:`remove_partial_files`). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from histoview.io.files import write_bytes
from histoview.models.checkpoint import json_default

FORMAT = "histoview-train-state"
FORMAT_VERSION = 1
_RECORD_KEY = "histoview_train_state"
#: the files a run folder holds (their temporaries are removed when a run starts)
RUN_FILES = (
    "train_state.safetensors",
    "train_state.prev.safetensors",
    "train_state.json",
    "last.safetensors",
    "last.json",
    "best.safetensors",
    "best.json",
    "report.json",
    "history.csv",
)


class TrainStateError(ValueError):
    """A resume unit that cannot be used: unreadable, altered, or from another model."""


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of ``tensors``' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_train_state(path: Path, optimizer, info: dict[str, Any]) -> None:
    """Write a run's resume unit to ``path`` (``.safetensors``) atomically, then the readable
    ``.json`` copy of its record (module docstring).

    ``info`` is the record (JSON: ``epoch``, ``history``, ``best_score``, ``best_epoch``,
    ``checkpoint`` metadata...); its ``weights`` entry, when present, is the model's state
    dict (CPU tensors), stored in the same file. The unit that ``path`` held before is kept
    as ``<stem>.prev.safetensors``.
    """
    from safetensors.torch import save

    path = Path(path).with_suffix(".safetensors")
    info = dict(info)
    weights = info.pop("weights", None) or {}
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    for k, v in weights.items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info,
        "param_groups": [dict(g) for g in sd["param_groups"]],
        "scalars": scalars,
        "has_weights": bool(weights),
        "tensors_sha256": tensors_sha256(tensors),
    }
    text = json.dumps(record, default=_json_default)
    data = save(tensors or {"_": torch.zeros(1)}, metadata={_RECORD_KEY: text})
    _keep_previous(path)
    write_bytes(path, data, overwrite=True)
    summary = {k: v for k, v in record.items() if k not in ("param_groups", "scalars")}
    summary["note"] = f"a readable copy of the record in {path.name}, which resuming reads"
    write_bytes(
        path.with_suffix(".json"),
        json.dumps(summary, indent=1, default=_json_default).encode(),
        overwrite=True,
    )


def load_train_state(path: Path, optimizer) -> dict[str, Any]:
    """Read the resume unit ``path``, check it and load the optimizer's state; returns the
    record with ``weights`` (the model's state dict, or None for a unit written by an older
    histoview, whose weights are in ``last.safetensors``). TrainStateError names the file
    and the problem; the optimizer is untouched then."""
    path = Path(path).with_suffix(".safetensors")
    record, tensors = _read_unit(path)
    if record is None:  # an older histoview: optimizer tensors here, the record in the .json
        return _load_legacy(path, optimizer, tensors)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    opt = {k[10:]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    _load_optimizer(path, optimizer, opt, record.pop("scalars"), record.pop("param_groups"))
    record["weights"] = weights if record.pop("has_weights", False) else None
    return record


def _read_unit(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """The record (None for an older unit without one) and tensors of the unit ``path``,
    checked against the record's hash (TrainStateError names the file and the problem)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise TrainStateError(f"{path}: cannot read the resume state ({exc})") from None
    text = (header.get("__metadata__") or {}).get(_RECORD_KEY)
    if text is None:
        return None, tensors
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise TrainStateError(f"{path}: the resume record is not valid JSON ({exc})") from None
    if record.get("format") != FORMAT or not isinstance(record.get("epoch"), int):
        raise TrainStateError(f"{path}: not a histoview resume state")
    tensors.pop("_", None)
    if tensors_sha256(tensors) != record.get("tensors_sha256"):
        raise TrainStateError(
            f"{path}: the tensors do not match the hash in its record (corrupted or altered)"
        )
    return record, tensors


def describe_run_state(out_dir: Path) -> str:
    """What a run stopped from outside (a killed process) left in ``out_dir``, in words: the
    newest resume unit that verifies and whether ``last.safetensors`` holds its epoch whole
    (reads only; :func:`load_resume_state` and :func:`repair_checkpoints` act on it)."""
    out_dir = Path(out_dir)
    last = out_dir / "last.safetensors"
    for name in ("train_state.safetensors", "train_state.prev.safetensors"):
        unit = out_dir / name
        if not unit.exists():
            continue
        try:
            record, _ = _read_unit(unit)
        except TrainStateError:
            continue
        if record is None:  # an older unit: its epoch is in the readable copy
            return f"the last checkpoint {last} is kept (an older resume state)"
        epoch = record["epoch"]
        if checkpoint_matches(last, epoch):
            return f"the last checkpoint {last} (epoch {epoch}) is intact"
        return (
            f"the resume state {unit} (epoch {epoch}) is intact and restores {last.name} "
            "on resuming"
        )
    if last.exists():
        return f"no usable resume state in {out_dir}; {last} is left as it was"
    return f"no epoch had finished, so {out_dir} holds no checkpoint yet"


def _load_legacy(path: Path, optimizer, tensors: dict) -> dict[str, Any]:
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        scalars, groups = info.pop("scalars"), info.pop("param_groups")
    except (OSError, ValueError, KeyError) as exc:
        raise TrainStateError(
            f"{path}: cannot read its record {path.with_suffix('.json').name} ({exc})"
        ) from None
    tensors.pop("_", None)
    _load_optimizer(path, optimizer, tensors, scalars, groups)
    return {**info, "weights": None}


def _load_optimizer(path, optimizer, tensors, scalars, groups) -> None:
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, v in tensors.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        for key, v in scalars.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TrainStateError(
            f"{path}: the optimizer state does not fit this run's model ({exc})"
        ) from None


def load_resume_state(out_dir: Path, model, optimizer) -> tuple[dict[str, Any] | None, list[str]]:
    """Load the newest resume unit of ``out_dir`` that verifies into ``model`` and
    ``optimizer``; returns ``(record, messages)``, record None when there is none to resume.

    Tries ``train_state.safetensors``, then ``train_state.prev.safetensors`` (each message
    says what was skipped and why). A unit whose weights do not fit ``model`` (another
    model or settings in the same folder) raises CheckpointError: resuming it would be
    wrong and starting afresh would overwrite the run.
    """
    from histoview.models.checkpoint import (
        CheckpointError,
        check_state_dict,
        load_state_dict,
        non_finite_tensors,
    )

    out_dir = Path(out_dir)
    messages: list[str] = []
    candidates = [out_dir / "train_state.safetensors", out_dir / "train_state.prev.safetensors"]
    for path in candidates:
        if not path.exists():
            continue
        try:
            record = load_train_state(path, optimizer)
            weights = record.pop("weights")
            if weights is None:  # older layout: the weights are last.safetensors'
                weights, _ = load_state_dict(out_dir / "last.safetensors")
            elif bad := non_finite_tensors(weights):
                raise TrainStateError(f"{path}: weights {bad[0][0]!r} are not finite")
        except (TrainStateError, CheckpointError) as exc:
            messages.append(f"WARNING: {exc}; skipped")
            continue
        check_state_dict(model, weights, str(path))
        model.load_state_dict(weights)
        if path != candidates[0]:
            messages.append(f"resuming from the previous state {path.name}")
        return record, messages
    if messages:
        raise TrainStateError(
            f"{out_dir}: no usable resume state ({'; '.join(messages)}); start afresh "
            "(histoview train --restart, or another output folder)"
        )
    return None, messages


def checkpoint_matches(path: Path, epoch: int) -> bool:
    """Whether the checkpoint ``path`` is whole (its sidecar valid, its weights the ones its
    sidecar's hash names) and holds ``epoch``."""
    from histoview.models.checkpoint import CheckpointError, read_metadata, sha256_file

    try:
        meta = read_metadata(path)
    except CheckpointError:
        return False
    return meta.get("epoch") == epoch and meta.get("weights_sha256") == sha256_file(path)


def repair_checkpoints(
    model, record: dict[str, Any], last_path: Path, best_path: Path
) -> list[str]:
    """After :func:`load_resume_state`: rewrite ``last`` (and ``best``, when the unit's epoch
    was the best) from ``model`` where they are not whole or hold another epoch; a damaged
    ``best`` of an earlier epoch (not restorable) is removed, so the next epoch becomes
    the best. Returns what was done, one message each."""
    from histoview.models.checkpoint import save_checkpoint, sidecar_path

    epoch, meta, done = record["epoch"], record.get("checkpoint"), []
    if meta is None:  # an older unit: no metadata to rewrite from
        return done
    if not checkpoint_matches(last_path, epoch):
        save_checkpoint(last_path, model, meta)
        done.append(f"{last_path.name} did not hold epoch {epoch} whole: rewritten")
    best_epoch = record.get("best_epoch")
    if best_epoch == epoch and not checkpoint_matches(best_path, epoch):
        save_checkpoint(best_path, model, meta)
        done.append(f"{best_path.name} did not hold epoch {epoch} whole: rewritten")
    elif (
        best_epoch is not None
        and best_path.exists()
        and not checkpoint_matches(best_path, best_epoch)
    ):
        best_path.unlink(missing_ok=True)
        sidecar_path(best_path).unlink(missing_ok=True)
        done.append(
            f"WARNING: {best_path.name} (epoch {best_epoch}) is damaged: removed; "
            "the next epoch becomes the best"
        )
    return done


def remove_partial_files(out_dir: Path) -> list[Path]:
    """Remove the temporary files that a kill during :func:`histoview.io.files.atomic_write`
    leaves in a run folder (``.last.safetensors.<hex>.tmp.safetensors`` and the like, for
    the names of :data:`RUN_FILES` only); returns them."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(out_dir).glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def discard_train_state(out_dir: Path) -> None:
    """Remove a run folder's resume units (a run started afresh must not resume them)."""
    for name in ("train_state.safetensors", "train_state.prev.safetensors", "train_state.json"):
        (Path(out_dir) / name).unlink(missing_ok=True)


def _keep_previous(path: Path) -> None:
    """Give the unit at ``path`` (if any) the name ``<stem>.prev.safetensors`` as well,
    atomically (a hard link under a temporary name, then a rename)."""
    if not path.exists():
        return
    prev = path.with_name(f"{path.stem}.prev{path.suffix}")
    if prev.exists() and os.path.samefile(path, prev):
        return  # kept already (a kill came between this and the unit's write)
    tmp = path.with_name(f".{prev.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:  # no hard links here: keep no previous unit rather than copy one
        pass
    finally:  # (rename between two links of one file leaves both: POSIX)
        tmp.unlink(missing_ok=True)


def _json_default(obj: Any) -> Any:
    return json_default(obj, what="a resume state")
