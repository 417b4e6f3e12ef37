"""What a whole-slide run writes (:func:`histoview.explain.slide_run.explain_slide`), each file
whole or absent (:mod:`histoview.io.files`): every map channel as a single-channel pyramidal
OME-TIFF at the map's pixel size and place on the slide (``<stem>.<method>.ome.tif`` for the
first, ``<stem>.<method>.<map>[.<channel>].ome.tif`` for the others), the tissue mask
(``<stem>.tissue.ome.tif``) and the JSON summary (``<stem>.<method>.json``)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np


def write_outputs(
    out_dir, stem, method, outcome, summary, tissue, overwrite, region, tissue_stem=None
):
    """The OME-TIFF maps, the tissue mask (named after ``tissue_stem``, default ``stem``: it
    is the slide's, also for a region run) and the JSON summary (each whole or absent)."""
    from histoview.io.files import write_text
    from histoview.io.ome_tiff import write_ome_tiff

    outputs: dict[str, Path] = {}
    about = {
        "method": method,
        "model": summary["model"],
        "checkpoint_sha256": summary["checkpoint_sha256"],
        "notice": summary["notice"],
    }
    # one single-channel file per map channel: napari, QuPath and histoview's reader all open a
    # single-channel float OME-TIFF as an overlay (a channel stack would need a viewer setting)
    for i, fmap in enumerate(outcome.maps):
        channels = list(fmap.channel_names) or [fmap.name]
        for k, channel in enumerate(channels):
            # the first map's first channel is "the" map; other channels and maps get suffixes
            key = ["map", f"map:{_slug(channel)}"][k > 0] if i == 0 else f"map:{fmap.name}"
            if i > 0 and k > 0:
                key += f":{_slug(channel)}"
            suffix = key.split(":", 1)[1].replace(":", ".") if ":" in key else ""
            written = write_ome_tiff(
                out_dir
                / (f"{stem}.{method}.{suffix}.ome.tif" if suffix else f"{stem}.{method}.ome.tif"),
                _Channel(fmap.array, k) if len(channels) > 1 else fmap.array,
                pixel_size_um=fmap.pixel_size_um,
                channel_names=[channel],
                overwrite=overwrite,
                metadata={**about, "map": fmap.name, "channel": channel},
                origin_um=fmap.origin_um,
            )
            outputs[key] = written
    if tissue is not None and hasattr(tissue, "mask"):
        outputs["tissue"] = write_ome_tiff(
            out_dir / f"{tissue_stem or stem}.tissue.ome.tif",
            tissue.mask,
            pixel_size_um=tissue.pixel_size_um,
            channel_names=["tissue"],
            overwrite=overwrite,
            metadata={
                "mask": "tissue",
                **(tissue.describe() if hasattr(tissue, "describe") else {}),
            },
        )
    summary["map_files"] = {k: v.name for k, v in outputs.items()}
    summary["map_pixel_size_um"] = outcome.maps[0].pixel_size_um if outcome.maps else None
    summary["map_origin_um"] = list(outcome.maps[0].origin_um) if outcome.maps else None
    outputs["json"] = write_text(
        out_dir / f"{stem}.{method}.json",
        json.dumps(summary, indent=2, default=_json_default),
        overwrite=overwrite,
    )
    return outputs


def free_stem(out_dir, stem: str, method: str, overwrite: bool = False) -> str:
    """The name a run's files take in ``out_dir``: ``stem`` when no earlier run of ``method``
    left files under it (the working store ``<stem>.<method>.zarr`` does not count) or with
    ``overwrite``, else the first ``<stem>-<i>`` with none, so that a rerun's maps, summary
    and nuclei files all carry the same number."""
    if overwrite:
        return stem
    folder = Path(out_dir)

    def taken(name: str) -> bool:
        pattern = str(folder / f"{glob.escape(name)}.{glob.escape(method)}.*")
        return any(not p.endswith(".zarr") for p in glob.glob(pattern))

    candidate, i = stem, 0
    while taken(candidate):
        i += 1
        candidate = f"{stem}-{i}"
    return candidate


def uniform_prediction(summary: dict) -> dict:
    """The summary's slide prediction in one form whatever the method: ``probabilities``
    {class name: p}, ``predicted_class`` (index), ``predicted_label`` and ``prediction``
    (name); processors may give probabilities as a list and the class as a name or an index.
    Changes ``summary`` in place and returns it."""
    classes = list(summary.get("classes") or [])
    probs = summary.get("probabilities")
    if isinstance(probs, (list, tuple)) and len(probs) == len(classes):
        summary["probabilities"] = {c: float(p) for c, p in zip(classes, probs)}
    decided = summary.get("predicted_class")
    if decided is None:
        decided = summary.get("predicted_label", summary.get("prediction"))
    if isinstance(decided, str) and decided in classes:
        decided = classes.index(decided)
    if isinstance(decided, (int, np.integer)) and 0 <= int(decided) < len(classes):
        summary["predicted_class"] = int(decided)
        summary["predicted_label"] = summary["prediction"] = classes[int(decided)]
    return summary


class _Channel:
    """Channel ``k`` of an (H, W, C) array-like, read block by block (for the map writer)."""

    def __init__(self, array, k: int):
        self._array, self._k = array, k
        self.shape, self.dtype, self.ndim = tuple(array.shape[:2]), np.dtype(array.dtype), 2

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self._array[key[:2]])[..., self._k]

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def _slug(text: str) -> str:
    """A file-name-safe short form of a channel name ("p(malignant)" -> "p-malignant")."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "channel"


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
