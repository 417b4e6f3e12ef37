"""Data-loader benchmark: seconds per training epoch with 0 and with n loader workers.

Trains a small model on generated phantoms (BreakHis preset, 460 x 700 px) for a few
epochs with ``train: {num_workers: w}`` for each ``w`` and prints, per setting, the wall
time of the first epoch (which also decodes, or here generates, every image once per
process that draws it) and of the later epochs (images cached), each the minimum over
``--repeats`` runs, and the CPU seconds of the main process and of its reaped worker
processes. Validation is included in an epoch's time; the test evaluation is not.

Usage: python benchmarks/bench_loader.py [--model amil] [--workers 0 2] [--images 32]
       [--epochs 3] [--batch-size 4] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from histoview.training.run import iter_train_from_config


def run_once(model: str, workers: int, images: int, epochs: int, batch: int, device: str):
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "model": model,
            "data": {"type": "phantom", "task": "binary", "n_per_class": images // 2, "seed": 1},
            "split": {"fractions": [0.7, 0.15, 0.15]},
            "input": {"cache_dir": str(Path(tmp) / "graphs")},
            "train": {
                "epochs": epochs,
                "batch_size": batch,
                "device": device,
                "num_workers": workers,
                "mixup_alpha": 0.2,
            },
            "output_dir": str(Path(tmp) / "run"),
        }
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, ends = time.process_time(), []
        start = time.perf_counter()
        for event in iter_train_from_config(config):
            if event["event"] == "start":
                start = time.perf_counter()
            elif event["event"] == "epoch_end":
                ends.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    epochs_s = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
    return epochs_s, cpu, worker_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="amil")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{args.model}, {args.images} phantoms, batch {args.batch_size}, {args.device}")
    print("workers  first epoch (s)  later epochs (s)  main CPU (s)  worker CPU (s)  epochs (s)")
    for workers in args.workers:
        runs = [
            run_once(args.model, workers, args.images, args.epochs, args.batch_size, args.device)
            for _ in range(args.repeats)
        ]
        first = min(r[0][0] for r in runs)
        later = min((min(r[0][1:]) for r in runs if len(r[0]) > 1), default=float("nan"))
        cpu, wcpu = min(r[1] for r in runs), min(r[2] for r in runs)
        each = " ".join(f"{t:.2f}" for t in min(runs, key=lambda r: sum(r[0]))[0])
        print(f"{workers:7d}  {first:15.2f}  {later:16.2f}  {cpu:12.2f}  {wcpu:14.2f}  {each}")


if __name__ == "__main__":
    main()
