"""What a Dask worker runs for one slide: :func:`run_slide`, outputs moved into place whole.

Each slide has a folder of its own in the output folder, ``OUT/<name>/``, holding every
method's outputs (:func:`~histoview.explain.slide_run.explain_slide`'s map OME-TIFFs and JSON
summaries, one tissue mask) and ``batch.json``, the slide's record with its task key
(:mod:`.keys`). The worker explains into a private temporary folder,
``OUT/.histoview-batch/<name>.<pid>.<token>/``, and only when every method is done renames it
to ``OUT/<name>`` (``os.rename`` of a directory: atomic on one file system; it fails when the
name holds a non-empty folder, so two attempts never mix). So ``OUT/<name>`` is whole or
absent:

* a worker killed mid-slide leaves only its temporary folder (its pid is in the name), which
  :func:`clean_temporaries` removes; Dask reruns the slide elsewhere;
* an attempt that finds ``OUT/<name>`` already holding the same key (a rerun of a slide whose
  worker died after the rename) discards its own copy: nothing twice;
* a folder with another key (other settings, or the slide changed) is replaced: moved aside,
  the new one renamed in, the old one removed.

Any error of the slide (unreadable file, no tissue, a pixel size that cannot be estimated...)
is caught into a ``failed`` record with its one-line message, so the batch goes on. Records
are plain dicts (JSON types only), the same in the summary table.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

#: the output folder's hidden folder of attempts in progress
TEMP_DIR = ".histoview-batch"
#: the record in each slide's folder
RECORD = "batch.json"


def run_slide(
    slide: str, name: str, key: str, out_dir: str, settings: dict[str, Any], label=None
) -> dict[str, Any]:
    """Explain ``slide`` with every method of ``settings`` into ``OUT/<name>`` (module
    docstring) and return its record (status ``done`` or ``failed``)."""
    from histoview.batch.keys import BatchSettings

    start = time.perf_counter()
    cfg = BatchSettings(**{**settings, "methods": tuple(settings["methods"])})
    out = Path(out_dir)
    record: dict[str, Any] = {
        "slide": str(slide),
        "name": name,
        "label": label,
        "key": key,
        "methods": list(cfg.methods),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    tmp = out / TEMP_DIR / f"{name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        summaries = _explain_all(slide, tmp, cfg)
        record.update(_outcome(summaries))
        record.update(status="done", error=None, time_s=round(time.perf_counter() - start, 3))
        record["outputs"] = sorted(p.name for p in tmp.iterdir())
        record["outputs"].append(RECORD)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        record["placed"] = place(tmp, out / name, key)
    except Exception as exc:  # the slide fails, the batch goes on
        record.update(
            status="failed",
            error=error_line(exc),
            time_s=round(time.perf_counter() - start, 3),
            prediction=None,
            probabilities=None,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _explain_all(slide: str, folder: Path, cfg) -> dict[str, dict]:
    import inspect
    import multiprocessing

    from histoview.explain.slide_engine import resolve_device
    from histoview.explain.slide_run import explain_slide

    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    loaders = cfg.tile_workers
    if loaders is None:
        loaders = 2 if device.startswith("cuda") else 0
    if loaders and multiprocessing.current_process().daemon:
        loaders = 0  # a daemonic Dask worker cannot start loader processes: read in-process
    extra = {}
    if "feature_cache" in inspect.signature(explain_slide).parameters:
        extra["feature_cache"] = cfg.feature_cache
    summaries, tissue = {}, None
    for method in cfg.methods:
        result = explain_slide(
            slide,
            method,
            out_dir=folder,
            checkpoint=cfg.checkpoint,
            model=cfg.model,
            pixel_size_um=cfg.pixel_size_um,
            region=cfg.region,
            device=device,
            batch_size=cfg.batch_size,
            workers=loaders,
            target_class=cfg.target_class,
            options=cfg.options or None,
            resume=False,
            tissue=tissue,
            write_tissue=tissue is None,
            **extra,
        )
        tissue = result.tissue
        summaries[method] = result.summary
    return summaries


def _outcome(summaries: dict[str, dict]) -> dict[str, Any]:
    """The record's prediction (the first method that makes one) and each method's."""
    per_method = {
        m: {"prediction": s.get("prediction"), "probabilities": s.get("probabilities")}
        for m, s in summaries.items()
    }
    first = next((v for v in per_method.values() if v["prediction"] is not None), None)
    return {
        "prediction": first["prediction"] if first else None,
        "probabilities": first["probabilities"] if first else None,
        "per_method": per_method,
    }


def place(tmp: Path, final: Path, key: str) -> str:
    """Rename the finished ``tmp`` to ``final``: ``"new"``, ``"replaced"`` (a folder with
    another key was there) or ``"duplicate"`` (one with this key was: ``tmp`` is discarded)."""
    how = "new"
    for _ in range(3):
        try:
            os.rename(tmp, final)
            return how
        except OSError:
            if not final.exists():
                raise
        if read_record(final).get("key") == key:
            shutil.rmtree(tmp, ignore_errors=True)
            return "duplicate"
        aside = final.parent / TEMP_DIR / f"{final.name}.old.{secrets.token_hex(4)}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            continue  # another attempt moved it: try again
        shutil.rmtree(aside, ignore_errors=True)
        how = "replaced"
    raise OSError(f"{final}: could not move the finished outputs into place")


def read_record(folder: Path) -> dict[str, Any]:
    """A slide folder's ``batch.json`` (empty when absent or unreadable: not done)."""
    try:
        return json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def clean_temporaries(out_dir: str | os.PathLike) -> int:
    """Remove the temporary folders of attempts that are no longer running (their process is
    gone on this host); returns how many were removed. Run before and after a batch."""
    root = Path(out_dir) / TEMP_DIR
    if not root.is_dir():
        return 0
    removed = 0
    for item in root.iterdir():
        parts = item.name.rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(item, ignore_errors=True)
        removed += 1
    try:
        root.rmdir()
    except OSError:
        pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_line(exc: BaseException) -> str:
    """One line for the summary: the message without library line breaks or errno noise."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    line = "; ".join(s.strip() for s in text.splitlines() if s.strip())
    return line if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {line}"
