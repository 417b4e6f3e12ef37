"""Batch benchmark: slides per hour with 1 and 2 Dask workers, and the batch layer's overhead.

Usage::

    python benchmarks/bench_batch.py [--slides 6] [--size 2048] [--workers 1,2]
        [--method amil] [--device cpu] [--tile-workers 0] [--repeat 2] [--keep DIR]

1. Writes ``--slides`` phantom slides (``write_phantom_slide``, seeds 0..n-1, ``--size`` px
   at 0.25 um/px) into a temporary folder: the fixed set.
2. Direct: in this process, after one warm-up slide (imports, first model load), calls
   :func:`histoview.explain.slide_run.explain_slide` on each slide in turn, torch on all
   cores: the time the slide engine itself needs.
3. Batch: for each worker count, an embedded LocalCluster (:func:`histoview.batch.cluster.
   batch_client`; torch threads = cores // workers), one warm-up task per worker, then
   :func:`histoview.batch.run.run_batch` over the same slides into a fresh folder (no feature
   cache, so every slide is computed): slides per hour from the batch's wall time.
4. Overhead: (batch with 1 worker - direct) / direct, over the same slides, both warm;
   the cluster's start-up is reported on its own (paid once per batch, not per slide).

Each timing is the fastest of ``--repeat`` passes. Prints one JSON record. CPU figures on a
shared machine are noisy (other processes compete for the cores): the load average is printed
with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _settings(args, torch_threads=None):
    from histoview.batch.keys import BatchSettings

    return BatchSettings(
        methods=(args.method,),
        device=args.device,
        tile_workers=args.tile_workers,
        feature_cache="off",
        torch_threads=torch_threads,
    )


def _direct(args, slides, root: Path) -> float:
    from histoview.explain.slide_run import explain_slide

    def one(path, out):
        explain_slide(
            path,
            args.method,
            out_dir=out,
            device=args.device,
            workers=args.tile_workers,
            resume=False,
            feature_cache="off",
        )

    one(slides[0], root / "direct-warmup")
    best = float("inf")
    for rep in range(args.repeat):
        start = time.perf_counter()
        for path in slides:
            one(path, root / f"direct-{rep}" / path.stem)
        best = min(best, time.perf_counter() - start)
    return best


def _batch(args, slides, root: Path, workers: int) -> dict:
    from distributed import wait

    from histoview.batch.cluster import batch_client, torch_threads
    from histoview.batch.run import run_batch
    from histoview.batch.task import run_slide

    t0 = time.perf_counter()
    with batch_client(workers=workers, retries=1) as client:
        client.wait_for_workers(workers)
        started = time.perf_counter() - t0
        threads = torch_threads(workers)
        cfg = _settings(args, threads).to_dict()
        warm = root / f"warmup-{workers}"
        futures = [
            client.submit(run_slide, str(slides[0]), f"w{i}", f"w{i}", str(warm), cfg, pure=False)
            for i in range(workers)
        ]
        wait(futures)
        seconds = float("inf")
        for rep in range(args.repeat):
            t1 = time.perf_counter()
            result = run_batch(
                [str(p) for p in slides],
                _settings(args, threads),
                root / f"batch-{workers}-{rep}",
                client=client,
                write=lambda line: None,
            )
            seconds = min(seconds, time.perf_counter() - t1)
            assert result.counts["done"] == len(slides), result.counts
    return {
        "workers": workers,
        "torch_threads": threads,
        "cluster_start_s": round(started, 2),
        "seconds": round(seconds, 2),
        "slides_per_hour": round(len(slides) / seconds * 3600, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slides", type=int, default=6)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--method", default="amil")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tile-workers", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="passes; the fastest counts")
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = p.parse_args(argv)
    from histoview.preprocessing.phantom_slide import write_phantom_slide

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        slides = [
            write_phantom_slide(
                root / "slides" / f"p{i}.tif", size=args.size, seed=i, overwrite=True
            ).path
            for i in range(args.slides)
        ]
        direct = _direct(args, slides, root)
        runs = [_batch(args, slides, root, int(n)) for n in args.workers.split(",")]
        one = next((r for r in runs if r["workers"] == 1), None)
        record = {
            "slides": args.slides,
            "size_px": args.size,
            "method": args.method,
            "device": args.device,
            "cores": os.cpu_count(),
            "load_average": [round(v, 1) for v in os.getloadavg()],
            "direct_seconds": round(direct, 2),
            "direct_slides_per_hour": round(args.slides / direct * 3600, 1),
            "batch": runs,
        }
        if one is not None:
            record["overhead_1_worker"] = round(one["seconds"] / direct - 1, 4)
            record["overhead_per_slide_s"] = round((one["seconds"] - direct) / args.slides, 3)
            for r in runs:
                r["scaling_vs_1_worker"] = round(one["seconds"] / r["seconds"], 3)
        print(json.dumps(record, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
