"""``run_batch``: explain many slides, one Dask task each, nothing lost and nothing twice.

1. the inputs (:func:`~histoview.batch.inputs.collect_inputs`) and, for each slide, its
   folder name in OUT (its stem; a stem two slides share gets the content hash's first digits)
   and its task key (:mod:`.keys`; the checkpoints are resolved and hashed first, so a method
   without weights stops the batch before any work);
2. leftover temporary folders of killed attempts are removed
   (:func:`~histoview.batch.task.clean_temporaries`);
3. a slide whose folder's record holds the same key is ``skipped`` (done earlier); the others,
   failed before or new, are submitted, each as one task
   (:func:`~histoview.batch.task.run_slide`) with ``retries``: a worker that dies mid-slide
   has it rerun on another; with nothing to run no cluster is started;
4. as each finishes (``distributed.as_completed``) the summary is rewritten
   (:mod:`.summary`) and a progress line printed (:mod:`.progress`); a task Dask gives up on
   (it killed ``retries + 1`` workers) is a ``failed`` row like any slide's error;
5. temporary folders are removed again.

The same code runs on the embedded LocalCluster and on an existing scheduler
(:func:`~histoview.batch.cluster.batch_client`); the workers must see the slides and OUT at
the same paths (a shared file system on a cluster).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoview.batch.keys import BatchSettings


@dataclass
class BatchResult:
    """What :func:`run_batch` did: the summary rows (input order), their counts, how many
    tasks were submitted, the wall time and the summary files."""

    out_dir: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    submitted: int
    seconds: float
    summary_files: tuple[Path, Path]


def plan(slides, settings: BatchSettings, out_dir: Path) -> list[dict[str, Any]]:
    """One entry per slide: ``slide``, ``label``, ``name`` (its folder in OUT), ``key``, or
    ``error`` when the slide cannot even be read to hash it."""
    from histoview.batch.keys import checkpoint_hashes, settings_hash, task_key
    from histoview.batch.task import error_line
    from histoview.io.content_hash import content_hash
    from histoview.io.files import output_stem

    digest = settings_hash(settings.identity(checkpoint_hashes(settings)))
    stems: dict[str, int] = {}
    for slide in slides:
        stem = output_stem(slide.path)
        stems[stem] = stems.get(stem, 0) + 1
    entries = []
    for slide in slides:
        entry = {"slide": str(slide.path), "label": slide.label, "methods": list(settings.methods)}
        stem = output_stem(slide.path)
        try:
            entry["key"] = task_key(slide.path, digest)
            entry["name"] = stem if stems[stem] == 1 else f"{stem}-{content_hash(slide.path)[:8]}"
        except OSError as exc:
            entry.update(name=stem, key=None, error=error_line(exc))
        entries.append(entry)
    return entries


def run_batch(
    inputs: list[str | os.PathLike],
    settings: BatchSettings,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    client=None,
    write: Callable[[str], None] | None = None,
) -> BatchResult:
    """Explain every slide of ``inputs`` with ``settings`` into ``out_dir`` (module docstring).

    Args:
        inputs: slide files, folders, CSV list files.
        settings: the methods, weights and engine settings.
        out_dir: the output folder (every worker must be able to write it).
        workers: workers of the embedded cluster (default: one per GPU, else 2).
        scheduler: an existing Dask scheduler's address instead of the embedded cluster.
        retries: reruns of a slide whose worker died (or whose task raised).
        client: a ``distributed.Client`` to use as is (tests, notebooks).
        write: where progress lines go (default: stdout).
    """
    from histoview.batch.inputs import collect_inputs
    from histoview.batch.progress import Progress
    from histoview.batch.summary import Summary
    from histoview.batch.task import clean_temporaries, read_record
    from histoview.io.files import check_writable_dir

    say = write or (lambda line: print(line, flush=True))
    start = time.perf_counter()
    out = check_writable_dir(out_dir)
    entries = plan(collect_inputs(inputs, out_dir=out), settings, out)
    clean_temporaries(out)
    earlier = Summary.load(out)
    summary = Summary(out, [e["name"] for e in entries])
    todo = []
    for entry in entries:
        if entry.get("error"):
            summary.add({**entry, "status": "failed"})
            continue
        record = read_record(out / entry["name"])
        if record.get("key") == entry["key"] and record.get("status") == "done":
            summary.add({**record, "status": "skipped", "slide": entry["slide"]})
        else:
            todo.append(entry)
    counts = summary.counts()
    redo = sum(1 for e in todo if earlier.get(e["name"], {}).get("status") == "failed")
    say(
        f"{len(entries)} slides: {counts['skipped']} done earlier with these settings, "
        f"{len(todo)} to explain ({redo} failed before)"
        + (f", {counts['failed']} unreadable" if counts["failed"] else "")
    )
    files = summary.write()
    if todo:
        progress = Progress(len(entries), done=len(entries) - len(todo), write=say)
        if client is not None:
            _run_tasks(client, todo, settings, out, retries, scheduler is None, summary, progress)
        else:
            from histoview.batch.cluster import batch_client

            with batch_client(workers=workers, scheduler=scheduler, retries=retries) as c:
                _run_tasks(c, todo, settings, out, retries, scheduler is None, summary, progress)
        files = summary.write()
        clean_temporaries(out)
    return BatchResult(
        out, summary.ordered(), summary.counts(), len(todo), time.perf_counter() - start, files
    )


def _run_tasks(client, todo, settings, out, retries, embedded, summary, progress) -> None:
    from distributed import as_completed

    from histoview.batch.cluster import dashboard_line, torch_threads, workers_line
    from histoview.batch.task import error_line, run_slide

    progress.write(f"dask: {workers_line(client)}; {dashboard_line(client)}")
    if embedded and settings.torch_threads is None:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {})) or 1
        settings = dataclasses.replace(settings, torch_threads=torch_threads(n))
    cfg = settings.to_dict()
    futures = {}
    for entry in todo:
        fut = client.submit(
            run_slide,
            entry["slide"],
            entry["name"],
            entry["key"],
            str(out),
            cfg,
            entry["label"],
            key=f"histoview-slide-{entry['name']}-{entry['key'][:12]}",
            retries=retries,
            pure=False,
        )
        futures[fut] = entry
    progress.start = time.monotonic()
    for fut in as_completed(list(futures)):
        entry = futures[fut]
        try:
            record = fut.result()
        except Exception as exc:  # Dask gave up on it (workers died) or it could not run
            record = {**entry, "status": "failed", "error": error_line(exc)}
        summary.add(record)
        summary.write()
        progress.finished(record)
        fut.release()
