"""The slides of a batch: slide files, folders searched recursively, or CSV list files.

``collect_inputs(["a.svs", "slides/", "cohort.csv"])`` gives one :class:`SlideInput` per
slide, in the order given (a folder's slides sorted by path), each slide once:

* a file with a suffix other than ``.csv`` is a slide, whatever its suffix (the io layer says
  if it cannot open it, and the batch reports that slide as failed);
* a folder holds the files under it (recursively) with a slide suffix the io layer opens
  (:data:`SLIDE_SUFFIXES`: TIFF/SVS/OME-TIFF and the vendor formats; plain PNG/JPEG images and
  DICOM folders are given one by one). Skipped: hidden files and folders, ``.zarr`` stores,
  histoview's own outputs (``*.ome.tif`` maps and masks with a histoview JSON beside them,
  anything under the batch's output folder) and a phantom slide's ground truth
  (``<stem>.labels.tif`` beside ``<stem>.phantom.json``);
* a ``.csv`` file lists slides: a ``path`` column (relative paths are resolved against the
  CSV's folder) and an optional ``label`` column, carried to the summary.

Errors name the file: a list without a ``path`` column, a listed slide or an input that does
not exist, a folder without slides.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from histoview.io.image import PLAIN_SUFFIXES, SUPPORTED_SUFFIXES
from histoview.io.openslide_source import DICOM_SUFFIXES

#: suffixes a folder's files need to count as slides
SLIDE_SUFFIXES = tuple(s for s in SUPPORTED_SUFFIXES if s not in (*PLAIN_SUFFIXES, *DICOM_SUFFIXES))


class InputError(ValueError):
    """An input that is not a slide, a folder of slides or a valid list file (names it)."""


@dataclass(frozen=True)
class SlideInput:
    """One slide of a batch: its resolved path and its label from a list file (or None)."""

    path: Path
    label: str | None = None


def collect_inputs(
    inputs: list[str | os.PathLike], *, out_dir: str | os.PathLike | None = None
) -> list[SlideInput]:
    """The slides of ``inputs`` (module docstring); ``out_dir``'s files are never inputs.

    Raises:
        InputError: an input that does not exist, a folder without slides, a list file
            without a ``path`` column or naming a missing slide.
    """
    if not inputs:
        raise InputError("no inputs: give slide files, folders or a CSV list file")
    out = Path(out_dir).resolve() if out_dir is not None else None
    slides: dict[Path, SlideInput] = {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            found = _folder_slides(path, out)
            if not found:
                raise InputError(
                    f"{path}: no slides in this folder (looked for {', '.join(SLIDE_SUFFIXES)})"
                )
            items = [SlideInput(p) for p in found]
        elif path.suffix.lower() == ".csv":
            items = read_list_file(path)
        else:
            items = [SlideInput(path.resolve())]
        for slide in items:
            slides.setdefault(slide.path, slide)
    return list(slides.values())


def read_list_file(path: str | os.PathLike) -> list[SlideInput]:
    """The slides a CSV list file names (``path`` column, optional ``label``)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read this list file ({exc})") from None
    if "path" not in fields:
        raise InputError(
            f"{path}: a slide list needs a 'path' column (found: {', '.join(fields) or 'none'})"
        )
    slides = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            raise InputError(f"{path}: line {line}: empty path")
        slide = Path(row["path"]).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        if not slide.is_file():
            raise InputError(f"{path}: line {line}: {slide}: no such slide file")
        slides.append(SlideInput(slide.resolve(), row.get("label") or None))
    return slides


def _folder_slides(folder: Path, out: Path | None) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root).resolve()
        if out is not None and (root_path == out or out in root_path.parents):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
        for name in files:
            path = root_path / name
            if not name.startswith(".") and _is_slide(path):
                found.append(path)
    return sorted(found)


def _is_slide(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(SLIDE_SUFFIXES):
        return False
    if name.endswith(".labels.tif"):  # a phantom slide's ground truth
        stem = path.name[: -len(".labels.tif")]
        if (path.parent / f"{stem}.phantom.json").exists():
            return False
    if name.endswith((".ome.tif", ".ome.tiff")):  # histoview's maps: "<stem>.<what>.ome.tif"
        base = path.name[: -len(".ome.tif" if name.endswith(".ome.tif") else ".ome.tiff")]
        if (path.parent / f"{base}.json").exists() or base.endswith(".tissue"):
            return False
    return True
