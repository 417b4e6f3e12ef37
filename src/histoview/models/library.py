"""Where checkpoints live: the bundled weights and the user's model library.

* Bundled: ``histoview/resources/weights/*.safetensors`` (shipped in the wheel): the
  synthetic demo weights, trained on generated phantoms and labelled synthetic in their
  sidecars, and the real weights trained on the CC0 IDC patches (``*-idc``, each with its
  model card ``<name>.md``), labelled ``[real tissue]`` in lists and listed after the demos.
* User library: a per-user data folder (``platformdirs.user_data_dir("histoview")/models``,
  or ``$HISTOVIEW_DATA_DIR/models``), never inside the installed package.
  Models trained from the plugin are added here.

Listing reads only the sidecars (:func:`~histoview.models.checkpoint.read_metadata`, the
schema included); a checkpoint whose sidecar is missing or invalid is left out of
:func:`list_checkpoints` and reported, with the reason, by :func:`skipped_checkpoints`.
The weights (hash, finiteness, tensor shapes) are checked when a model is loaded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from histoview.models.checkpoint import CheckpointError, read_metadata, sidecar_path


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    path: Path
    meta: dict[str, Any]
    source: str  # "bundled" | "user"

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic"))

    def label(self) -> str:
        """One line for lists: name, model, classes, data, key metric."""
        metrics = self.meta.get("metrics") or {}
        val = metrics.get("test") or metrics.get("validation") or {}
        acc = val.get("balanced_accuracy")
        data = (self.meta.get("data") or {}).get("layout", "?")
        # bundled weights are either synthetic demos or real (the IDC weights, CC0 data)
        tag = (
            " [synthetic demo]" if self.synthetic else " [real tissue]" * (self.source == "bundled")
        )
        metric = f", bal. acc {acc:.2f}" if isinstance(acc, (int, float)) else ""
        classes = "/".join(self.meta.get("classes", []))
        return f"{self.name} ({self.model}; {classes}; {data}{metric}){tag}"


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint in the library that cannot be used, and why (one line naming the file
    and the problem, as :class:`~histoview.models.checkpoint.CheckpointError` says it)."""

    name: str
    path: Path
    source: str  # "bundled" | "user"
    reason: str


def bundled_weights_dir() -> Path:
    """The bundled demo weights: package ``histoview.resources`` (the repository's
    ``resources/``, mapped in pyproject.toml), ``weights/`` inside it."""
    return Path(str(files("histoview.resources") / "weights"))


def user_library_dir(create: bool = False) -> Path:
    base = os.environ.get("HISTOVIEW_DATA_DIR")
    if base:
        path = Path(base) / "models"
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("histoview", appauthor=False)) / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def list_checkpoints(*, kind: str | None = None, model: str | None = None) -> list[LibraryEntry]:
    """Every usable checkpoint (of a model ``kind`` or registry name ``model``, if given),
    user library first, then bundled demos; invalid ones are left out
    (:func:`skipped_checkpoints` says which and why)."""
    from histoview.models.registry import get_model_config

    entries, _ = _scan()
    return [
        e
        for e in entries
        if (kind is None or get_model_config(e.model).kind == kind)
        and (model is None or e.model == model)
    ]


def skipped_checkpoints() -> list[SkippedCheckpoint]:
    """The checkpoints :func:`list_checkpoints` leaves out, each with the reason (missing
    or invalid sidecar, unknown model...), user library first, then bundled demos."""
    return _scan()[1]


def _scan() -> tuple[list[LibraryEntry], list[SkippedCheckpoint]]:
    entries, skipped = [], []
    for source, folder in (("user", user_library_dir()), ("bundled", bundled_weights_dir())):
        if not folder.is_dir():
            continue
        found = []
        for path in sorted(folder.glob("*.safetensors")):
            try:
                meta = read_metadata(path)
            except CheckpointError as exc:
                skipped.append(SkippedCheckpoint(path.stem, path, source, str(exc)))
                continue
            found.append(LibraryEntry(path.stem, path, meta, source))
        # bundled: the synthetic demo weights first (the docks' default), then the real ones
        entries += sorted(found, key=lambda e: source == "bundled" and not e.synthetic)
    return entries, skipped


def find_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path from a file path or a library name."""
    p = Path(name_or_path)
    if not str(name_or_path).strip() or p.is_dir():
        raise CheckpointError(
            f"{str(name_or_path)!r} is not a checkpoint: give a .safetensors file or a library name"
        )
    if p.suffix == ".safetensors" or p.exists():
        if not p.exists():
            raise CheckpointError(f"{p}: checkpoint not found")
        return p
    entries, skipped = _scan()
    for entry in entries:
        if entry.name == str(name_or_path):
            return entry.path
    for bad in skipped:
        if bad.name == str(name_or_path):
            raise CheckpointError(bad.reason)
    raise CheckpointError(
        f"no checkpoint named {name_or_path!r} in the model library or bundled weights"
    )


def bundled_checkpoint(name: str | None, *, purpose: str = "this") -> Path:
    """The bundled checkpoint ``name`` (e.g. an explanation method's demo weights).

    CheckpointError when there is none (``purpose`` names what wanted it)."""
    path = bundled_weights_dir() / f"{name}.safetensors" if name else None
    if path is None or not path.exists():
        raise CheckpointError(
            f"no checkpoint given and no bundled demo weights for {purpose}; "
            "train one with `histoview train CONFIG` and pass --checkpoint"
        )
    return path


def add_to_library(checkpoint: str | os.PathLike, name: str) -> Path:
    """Copy a checkpoint and its sidecar into the user library as ``name`` (never overwrites)."""
    src = Path(checkpoint)
    read_metadata(src)
    folder = user_library_dir(create=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._") or "model"
    dest = folder / f"{safe}.safetensors"
    i = 1
    while dest.exists() or sidecar_path(dest).exists():
        dest = folder / f"{safe}-{i}.safetensors"
        i += 1
    shutil.copy2(sidecar_path(src), sidecar_path(dest))
    shutil.copy2(src, dest)
    return dest


def rename_in_library(entry: LibraryEntry, new_name: str) -> Path:
    if entry.source != "user":
        raise PermissionError(f"{entry.name}: bundled demo weights cannot be renamed")
    dest = entry.path.with_name(f"{new_name}.safetensors")
    if dest.exists() or sidecar_path(dest).exists():
        raise FileExistsError(f"{dest}: a model with that name already exists")
    sidecar_path(entry.path).rename(sidecar_path(dest))
    entry.path.rename(dest)
    return dest


def delete_from_library(entry: LibraryEntry) -> None:
    if entry.source != "user":
        raise PermissionError(f"{entry.name}: bundled demo weights cannot be deleted")
    entry.path.unlink()
    sidecar_path(entry.path).unlink(missing_ok=True)
