"""Whole slides, every figure of issue 17 item 7 in one table: method x slide size.

Usage::

    python benchmarks/bench_slide.py --work DIR [--sizes 10000,25000,50000]
        [--methods amil,gradcam] [--workers 2] [--batch-size 16] [--device cpu]
        [--forward-tiles 64] [--json PATH] [--reuse]

1. **Slides**: phantom slides (``histoview phantom-slide``, seed 0, JPEG tiles, 0.25 um/px) of
   each size, written once into ``DIR`` and reused when present, with their ground truth.
2. **The run**, as a user runs it: ``histoview explain SLIDE --method M --whole-slide --out
   DIR/out-<size> --workers W --batch-size B --device D --restart --overwrite
   --no-feature-cache`` in a child
   process. Measured from outside: the wall time (launch to exit: imports, tissue detection,
   the tiles, finalize, the OME-TIFF and JSON writes); the time from launch to the first batch
   of tiles in the store (the CLI's first progress line; headless, the napari figure is
   ``bench_slide_viewer.py``'s); **peak memory** two ways: the proportional set size (PSS:
   shared pages split between the processes sharing them) of the child and all its
   descendants (the ``DataLoader`` workers) summed, sampled every 0.25 s with psutil (the
   figure held against the goal), and the kernel's exact peak RSS of the largest single
   process, from ``os.wait4`` on the child (the per-child form of ``RUSAGE_CHILDREN``).
3. **Pure forward**: the same method's processor (``process`` alone: A-MIL's feature
   extractor and attention, Grad-CAM's forward and backward) on ``--forward-tiles`` tissue
   tiles of the same slide spread over its tissue, read into memory first
   (``slide_engine.forward_throughput``, as ``bench_slide_engine.py``), median of three
   passes. Ratios: the engine loop's tiles/s (the summary's, reading and merging included)
   over it, and the whole command's (tiles / wall time) over it. Goal: >= 0.85. On a machine
   shared with other work the wall-time ratios say as much about the neighbours as about the
   engine, so a third ratio uses CPU time, which load barely changes: the forward's CPU
   seconds per tile (this process, all threads) over the whole command's (``wait4``: the child
   and its workers, start-up, tissue detection, finalize and writes included) per tile.
4. **AUC** of the written map (``<stem>.<method>.ome.tif``, level 0) against the phantom's
   lesion mask (in situ + invasive), the label map sampled at each map pixel's centre
   (nearest), over the ground truth's tissue (label >= 1); also each lesion kind against benign
   tissue alone. Goal: >= 0.9 with the demo weights.
5. **Seam score** (border / inside differences, ~1 = no seams; ``slide_norm.seam_score``):
   Grad-CAM's from its summary; A-MIL's computed here on the map's patch grid (16 x 16 patches
   a tile, patches outside the bag left out).

Each run's record is kept in ``DIR/runs/<size>-<method>.json``; ``--reuse`` takes a record
made with the same settings instead of running again (so long runs can be done one at a time
and the table assembled afterwards). Prints the table and writes all figures to ``--json``.
CPU figures on a shared machine are noisy: ``os.getloadavg()`` is recorded with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import tissue_tiles  # noqa: E402

GOALS = {"ratio": 0.85, "memory_gib": 2.0, "auc": 0.9, "seam": 1.0, "first_tiles_s": 2.0}
VIEWER = "see bench_slide_viewer.py"
PROGRESS = re.compile(r"tiles (\d+)/(\d+)")


def phantom(work: Path, size: int) -> tuple[Path, dict]:
    """The phantom slide of ``size`` in ``work`` (written once: seed 0, JPEG tiles)."""
    from histoview.preprocessing.phantom_slide import ground_truth_paths, write_phantom_slide

    path = work / f"phantom-{size}.tif"
    if path.exists() and all(p.exists() for p in ground_truth_paths(path).values()):
        info = json.loads(ground_truth_paths(path)["info"].read_text(encoding="utf-8"))
        return path, {"written_now": False, "write_s": info.get("seconds")}
    print(f"writing {path} ...", file=sys.stderr, flush=True)
    slide = write_phantom_slide(path, size=size, seed=0, compression="jpeg", overwrite=True)
    return path, {"written_now": True, "write_s": round(slide.seconds, 1)}


class TreeMemory(threading.Thread):
    """Peak summed PSS and RSS (bytes) of a process and its descendants, sampled."""

    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.every_s = psutil.Process(pid), every_s
        self.peak_pss = self.peak_rss = self.peak_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break  # the child has gone
            pss = rss = 0
            for p in procs:
                try:
                    full = p.memory_full_info()
                except psutil.Error:  # a worker that just exited
                    continue
                pss, rss = pss + full.pss, rss + full.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.stop.wait(self.every_s)


def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("histoview")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "histoview.cli"]


def run_cli(slide: Path, method: str, out: Path, args, log: Path) -> dict:
    """``histoview explain`` on ``slide`` in a child process, measured from outside."""
    cmd = [
        *cli_command(),
        "explain",
        str(slide),
        "--method",
        method,
        "--whole-slide",
        "--out",
        str(out),
        "--workers",
        str(args.workers),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--restart",
        "--overwrite",
        "--no-feature-cache",  # every run computes (a cached slide replays its embeddings)
    ]
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    sampler = TreeMemory(child.pid)
    sampler.start()
    first_batch = None
    with log.open("w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        for line in child.stdout:
            now = time.perf_counter() - start
            fh.write(f"[{now:8.1f} s] {line}")
            fh.flush()
            if first_batch is None and PROGRESS.search(line):
                first_batch = now
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {child.returncode}; see {log}")
    return {
        "command": " ".join(cmd),
        "wall_s": round(wall, 1),
        "launch_to_first_batch_s": None if first_batch is None else round(first_batch, 1),
        "peak_pss_tree_gib": round(sampler.peak_pss / 2**30, 3),
        "peak_rss_tree_sum_gib": round(sampler.peak_rss / 2**30, 3),
        "peak_rss_largest_process_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),
        "processes": sampler.peak_procs,
        "child_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "log": str(log),
    }


def ground_truth_on(map_shape, mpp: float, origin_um, gt) -> np.ndarray:
    """The phantom's labels (``gt``: a :class:`~histoview.preprocessing.phantom_slide.
    GroundTruth`) at the centre of each pixel of a map of ``map_shape`` at ``mpp`` um/px whose
    corner is at ``origin_um`` (row, col) on the slide (nearest)."""
    idx = [
        np.clip(
            np.floor((origin_um[a] + (np.arange(n) + 0.5) * mpp) / gt.pixel_size_um).astype(int),
            0,
            gt.labels.shape[a] - 1,
        )
        for a, n in enumerate(map_shape)
    ]
    return gt.labels[np.ix_(*idx)]


def map_figures(summary: dict, out: Path, slide: Path) -> dict:
    """AUCs of the written map against the lesion mask, and A-MIL's seam score."""
    from histoview.explain.slide_cam import CellGrid
    from histoview.explain.slide_norm import seam_score
    from histoview.io import open_image
    from histoview.preprocessing.phantom_slide import load_ground_truth
    from histoview.training.metrics import roc_auc

    path = out / summary["map_files"]["map"]
    with open_image(path) as src:
        values = np.asarray(src.read_level(0), np.float64)
        mpp = float(src.pixel_size_um)
    if values.ndim == 3:
        values = values[..., 0] if values.shape[-1] == 1 else values[0]
    origin = summary.get("map_origin_um") or (0.0, 0.0)
    labels = ground_truth_on(values.shape, mpp, origin, load_ground_truth(slide))
    tissue = labels >= 1
    record = {
        "map": str(path),
        "map_shape": list(values.shape),
        "map_pixel_size_um": mpp,
        "auc": round(float(roc_auc(labels[tissue] >= 2, values[tissue])), 4),
        "tissue_map_pixels": int(tissue.sum()),
        "lesion_map_pixels": int((labels >= 2).sum()),
    }
    for kind, label in (("in_situ", 2), ("invasive", 3)):
        sel = (labels == 1) | (labels == label)
        if (labels == label).any():
            record[f"auc_{kind}_vs_benign"] = round(
                float(roc_auc(labels[sel] == label, values[sel])), 4
            )
    if "seam" in summary:
        record["seam_score"] = round(float(summary["seam"]["seam_score"]), 3)
    elif summary["method"] == "amil":
        k = summary["grid"]["tile_size"] // summary["patch_size"]
        grid = CellGrid((k, k), (0, 0), values.shape, tuple(summary["grid"]["grid_shape"]))
        seam = seam_score(np.where(values > 0, values, np.nan), grid)
        record["seam_score"] = round(float(seam["seam_score"]), 3)
    return record


def pure_forward(slide: Path, method: str, args) -> dict:
    """Tiles/s of the method's processor alone on tissue tiles of ``slide`` in memory."""
    from histoview.explain.methods import get_method
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_engine import forward_throughput
    from histoview.explain.slide_processor import SlideContext
    from histoview.io import open_image
    from histoview.preprocessing.tissue import detect_tissue

    net, meta, sha = load_for_method(method, device=args.device)
    ctx = SlideContext(float(meta["pixel_size_um"]), device=args.device)
    proc = get_method(method).slide(net, meta, sha, ctx)
    with open_image(slide) as src:
        _, boxes, tiles, _ = tissue_tiles(
            src, proc, ctx.pixel_size_um, detect_tissue(src), args.forward_tiles
        )
    prep = proc.prepare_tile  # None: the processor needs nothing done in the workers
    prepared = [prep(tile) if prep is not None else {} for tile in tiles]
    rates, cpu = [], []
    for _ in range(3):
        cpu0 = time.process_time()  # every thread of this process: torch's intra-op ones too
        rates.append(
            forward_throughput(
                proc,
                tiles,
                boxes,
                batch_size=args.batch_size,
                device=args.device,
                prepared=prepared,
            )
        )
        cpu.append((time.process_time() - cpu0) / len(boxes))
    return {
        "forward_tiles": len(boxes),
        "forward_tiles_per_s_passes": [round(r, 2) for r in rates],
        "forward_tiles_per_s": round(float(np.median(rates)), 2),
        "forward_cpu_s_per_tile": round(float(np.median(cpu)), 4),
    }


def settings(args) -> dict:
    return {
        "device": args.device,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "forward_tiles": args.forward_tiles,
    }


def one(size: int, method: str, args) -> dict:
    """The record of one method on one slide size (reused from ``runs/`` with ``--reuse``)."""
    runs = args.work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    saved = runs / f"{size}-{method}.json"
    if args.reuse and saved.exists():
        record = json.loads(saved.read_text(encoding="utf-8"))
        if record.get("settings") == settings(args):
            print(f"{size} {method}: reusing {saved}", file=sys.stderr, flush=True)
            if "forward_cpu_s_per_tile" not in record:  # the run was measured, not the forward
                add_forward(record, Path(record["slide"]), method, args, saved)
            return record
    slide, made = phantom(args.work, size)
    out = args.work / f"out-{size}"
    print(f"{size} {method}: histoview explain ...", file=sys.stderr, flush=True)
    run = run_cli(slide, method, out, args, runs / f"{size}-{method}.log")
    summary = json.loads((out / f"{slide.stem}.{method}.json").read_text(encoding="utf-8"))
    record = {
        "size": size,
        "method": method,
        "settings": settings(args),
        "slide": str(slide),
        "slide_bytes": slide.stat().st_size,
        "phantom": made,
        **run,
        "tiles": summary["tiles_done"],
        "tiles_skipped": summary["tiles_skipped"],
        "grid_tiles": int(np.prod(summary["grid"]["grid_shape"])),
        "tile_size": summary["grid"]["tile_size"],
        "engine_tiles_per_s": summary["tiles_per_s"],
        "engine_time_s": summary["time_s"],
        "prediction": summary.get("prediction"),
        "probabilities": summary.get("probabilities"),
    }
    record.update(map_figures(summary, out, slide))
    saved.write_text(json.dumps(record, indent=2), encoding="utf-8")
    add_forward(record, slide, method, args, saved)
    return record


def add_forward(record: dict, slide: Path, method: str, args, saved: Path) -> None:
    """The pure forward figures and the ratios, into ``record`` and its file."""
    record.update(pure_forward(slide, method, args))
    fwd = record["forward_tiles_per_s"]
    record["ratio_engine"] = round(record["engine_tiles_per_s"] / fwd, 3)
    record["ratio_end_to_end"] = round(record["tiles"] / record["wall_s"] / fwd, 3)
    record["loadavg_forward"] = [round(v, 2) for v in os.getloadavg()]
    # CPU time is what load does not change: the run's whole command (start-up, tissue, reading
    # in the workers, finalize, writes) per tile over the forward's per tile
    record["run_cpu_s_per_tile"] = round(record["child_cpu_s"] / record["tiles"], 4)
    record["ratio_cpu"] = round(record["forward_cpu_s_per_tile"] / record["run_cpu_s_per_tile"], 3)
    saved.write_text(json.dumps(record, indent=2), encoding="utf-8")


def table(records: list[dict]) -> str:
    """The markdown table of the records, goals in the header."""
    g = GOALS
    head = (
        "| method | slide px | tissue tiles | wall s | first batch s (CLI) | first tiles in napari "
        f"| engine tiles/s | pure forward tiles/s | ratio engine (>= {g['ratio']}) "
        f"| ratio end to end | ratio CPU s/tile | peak PSS GiB (< {g['memory_gib']:g}) | largest RSS GiB "
        f"| memory / smallest size | AUC (>= {g['auc']}) | AUC in situ / invasive "
        f"| seam (~{g['seam']:g}) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    smallest: dict[str, float] = {}
    for r in sorted(records, key=lambda r: (r["method"], r["size"])):
        base = smallest.setdefault(r["method"], r["peak_pss_tree_gib"])
        first = r.get("launch_to_first_batch_s")
        kinds = "/".join(
            f"{r[k]:.3f}" if k in r else "-"
            for k in ("auc_in_situ_vs_benign", "auc_invasive_vs_benign")
        )
        lines.append(
            f"| {r['method']} | {r['size']:,}^2 | {r['tiles']} | {r['wall_s']:.0f} "
            f"| {'-' if first is None else f'{first:.1f}'} | {VIEWER} "
            f"| {r['engine_tiles_per_s']:.2f} | {r['forward_tiles_per_s']:.2f} "
            f"| {r['ratio_engine']:.2f} | {r['ratio_end_to_end']:.2f} "
            f"| {r.get('ratio_cpu', float('nan')):.2f} "
            f"| {r['peak_pss_tree_gib']:.2f} | {r['peak_rss_largest_process_gib']:.2f} "
            f"| {r['peak_pss_tree_gib'] / base:.2f} | {r['auc']:.3f} | {kinds} "
            f"| {r.get('seam_score', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="slides, outputs and run records")
    ap.add_argument("--sizes", default="10000,25000,50000")
    ap.add_argument("--methods", default="amil,gradcam")
    ap.add_argument("--workers", type=int, default=2, help="tile readers of each run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--forward-tiles", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--reuse", action="store_true", help="reuse run records with the same settings")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the maps written")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    records = []
    for size in sizes:
        for method in methods:
            records.append(one(size, method, args))
        if not args.keep_outputs:
            shutil.rmtree(args.work / f"out-{size}", ignore_errors=True)
    print(table(records))
    print(
        f"\nfirst tiles in napari: {VIEWER} (the Whole slide dock, click to first tiles, goal "
        f"<= {GOALS['first_tiles_s']:g} s); memory: PSS of the command and its tile readers "
        "summed (psutil, 0.25 s), largest RSS: the kernel's peak of one process (wait4)"
    )
    if args.json is not None:
        doc = {"goals": GOALS, "machine": machine(), "records": records}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return 0


def machine() -> dict:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_now": [round(v, 2) for v in os.getloadavg()],
    }


if __name__ == "__main__":
    sys.exit(main())
