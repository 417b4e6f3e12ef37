"""Slide engine benchmark: throughput, peak memory and overhead of A-MIL on a big synthetic slide.

Usage::

    python benchmarks/bench_slide_engine.py [--size 50000] [--workers 2] [--batch-size 16]
        [--device cpu] [--slide PATH [--islands]] [--forward-tiles 64] [--keep]

1. Writes (or reuses, ``--slide``) a ``size`` x ``size`` pyramidal TIFF at 0.25 um/px, tile by
   tile (JPEG tiles, never in memory): round tissue islands of phantom H&E texture
   (:func:`histoview.preprocessing.phantom.make_phantom`, half benign, half invasive) on glass.
2. Runs ``explain_slide(..., "amil")`` (the bundled demo weights at 0.5 um/px) and samples the
   resident memory of this process and of the loader's workers every 0.2 s.
3. Reads the first ``--forward-tiles`` tissue tiles into memory and times the processor's
   ``process`` alone on them ("pure forward"), so the ratio says how much of the model's
   throughput the slide run keeps (reading, merging and writing hidden under compute).

Prints one JSON record. CPU figures on a shared machine are noisy: the script repeats the pure
forward and takes the fastest pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PIXEL_SIZE_UM = 0.25


class Islands:
    """``tile_fn`` of :func:`histoview.io.pyramid.write_pyramidal_tiff`: discs of phantom
    texture on glass, the same discs at every pyramid level."""

    def __init__(self, size: int, seed: int = 0, n: int = 14):
        from histoview.preprocessing.phantom import make_phantom

        rng = np.random.default_rng(seed)
        self.discs = [
            (
                rng.uniform(0.1, 0.9) * size,
                rng.uniform(0.1, 0.9) * size,
                rng.uniform(0.04, 0.11) * size,
                i % 2,
            )
            for i in range(n)
        ]
        base, self.lesions = [], []
        for label in ("benign", "invasive"):
            ph = make_phantom(label, shape=(1024, 1024), pixel_size_um=0.5, seed=seed)
            base.append(ph.image.repeat(2, 0).repeat(2, 1))  # 2048 x 2048 at 0.25 um/px
            self.lesions.append(ph.malignant_mask.astype(bool).repeat(2, 0).repeat(2, 1))
        self.textures = {0: base}

    def lesion(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether level-0 points (y, x) lie in a lesion of the phantom texture drawn there."""
        out = np.zeros(len(y), bool)
        for cy, cx, radius, kind in self.discs:  # a later disc paints over an earlier one
            inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
            mask = self.lesions[kind]
            n = mask.shape[0]
            out[inside] = mask[y[inside].astype(int) % n, x[inside].astype(int) % n]
        return out

    def texture(self, level: int, kind: int) -> np.ndarray:
        if level not in self.textures:
            f = 2**level
            self.textures[level] = [
                t.reshape(t.shape[0] // f, f, t.shape[1] // f, f, 3).mean((1, 3)).astype(np.uint8)
                for t in self.textures[0]
            ]
        return self.textures[level][kind]

    def __call__(self, level: int, r: int, c: int, size: int) -> np.ndarray:
        f = 2**level
        rr = ((r + np.arange(size)) * f)[:, None].astype(np.float64)
        cc = ((c + np.arange(size)) * f)[None, :].astype(np.float64)
        tile = np.full((size, size, 3), 242, np.uint8)
        for y, x, radius, kind in self.discs:
            if abs(y - (r + size / 2) * f) > radius + size * f or abs(x - (c + size / 2) * f) > (
                radius + size * f
            ):
                continue
            inside = (rr - y) ** 2 + (cc - x) ** 2 <= radius**2
            if inside.any():
                tex = self.texture(level, kind)
                n = tex.shape[0]
                ii = (r + np.arange(size)) % n
                jj = (c + np.arange(size)) % n
                tile[inside] = tex[np.ix_(ii, jj)][inside]
        return tile


def write_slide(path: Path, size: int) -> float:
    from histoview.io.pyramid import write_pyramidal_tiff

    start = time.perf_counter()
    write_pyramidal_tiff(
        path,
        shape=(size, size),
        tile_fn=Islands(size),
        tile=512,
        pixel_size_um=PIXEL_SIZE_UM,
        compression="jpeg",
    )
    return time.perf_counter() - start


class MemorySampler(threading.Thread):
    """Peak resident memory (bytes), sampled: this process's RSS, and the proportional set size
    (PSS: shared pages split between the processes sharing them, so forked workers' shared
    torch libraries are not counted twice) of it plus its workers."""

    def __init__(self, every_s: float = 0.25):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.every_s = psutil.Process(), every_s
        self.peak_self = self.peak_total = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                procs = [self.proc, *self.proc.children(recursive=True)]
                pss = sum(p.memory_full_info().pss for p in procs)
            except Exception:  # noqa: BLE001 - a worker that just exited
                continue
            self.peak_self = max(self.peak_self, rss)
            self.peak_total = max(self.peak_total, pss)
            self.stop.wait(self.every_s)


def attention_auc(map_path: Path, islands: Islands) -> float:
    """ROC AUC of the attention map over the patches in the bag against the phantom texture's
    lesion mask (in situ + invasive) at the map's pixel centres."""
    from histoview.io import open_image
    from histoview.training.metrics import roc_auc

    with open_image(map_path) as src:
        values = np.asarray(src.read_level(0), np.float64)
        step = src.pixel_size_um / PIXEL_SIZE_UM  # level-0 pixels per map pixel
    rows, cols = np.nonzero(values > 0)
    y, x = (rows + 0.5) * step, (cols + 0.5) * step
    return float(roc_auc(islands.lesion(y, x), values[rows, cols]))


def pure_forward(path: Path, n: int, batch_size: int, device: str) -> dict:
    """Tiles/s of the processor alone on the first ``n`` tissue tiles, already in memory."""
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_amil import AmilSlideProcessor
    from histoview.explain.slide_engine import forward_throughput
    from histoview.explain.slide_grid import make_grid
    from histoview.explain.slide_processor import SlideContext
    from histoview.io import open_image
    from histoview.preprocessing.tissue import detect_tissue

    net, meta, sha = load_for_method("amil", device=device)
    proc = AmilSlideProcessor(net, meta, sha, SlideContext(meta["pixel_size_um"], device=device))
    with open_image(path) as src:
        tissue = detect_tissue(src)
        grid = make_grid(
            (0, 0, *src.shape[:2]),
            pixel_size_um=meta["pixel_size_um"],
            level0_pixel_size_um=src.pixel_size_um,
            tile_size=proc.tile_size,
            tissue=tissue,
        )
        boxes = [grid.box(i) for i in grid.tissue_indices()[:n]]
        t = proc.tile_size
        tiles = np.stack([src.read_rect(b.level0[:2], (t, t), grid.pixel_size_um) for b in boxes])
    prepared = [proc.prepare_tile(tile) for tile in tiles]
    passes = []
    for _ in range(3):
        cpu = time.process_time()
        rate = forward_throughput(
            proc, tiles, boxes, batch_size=batch_size, device=device, prepared=prepared
        )
        passes.append((rate, (time.process_time() - cpu) / len(boxes)))
    return {
        "tiles": len(boxes),
        "tiles_per_s": max(r for r, _ in passes),
        "cpu_s_per_tile": min(c for _, c in passes),
    }


def main(argv=None) -> int:
    from histoview.explain.slide_run import explain_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--slide", type=Path, default=None, help="reuse this slide")
    ap.add_argument(
        "--islands", action="store_true", help="--slide was written by this script with --size"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--forward-tiles", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the slide and outputs")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-slide-"))
    slide = args.slide or work / f"islands-{args.size}.tif"
    record = {"size": args.size, "workers": args.workers, "batch_size": args.batch_size}
    if args.slide is None:
        record["write_slide_s"] = round(write_slide(slide, args.size), 1)
    record["slide_bytes"] = slide.stat().st_size
    sampler = MemorySampler()
    sampler.start()
    cpu0, start = time.process_time(), time.perf_counter()
    res = explain_slide(
        slide,
        "amil",
        out_dir=work / "out",
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=True,
    )
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    s = res.summary
    record.update(
        wall_s=round(wall, 1),
        main_process_cpu_s=round(time.process_time() - cpu0, 1),
        tiles=s["tiles_done"],
        tiles_total_grid=s["grid"]["grid_shape"][0] * s["grid"]["grid_shape"][1],
        patches=s["num_patches"],
        engine_tiles_per_s=s["tiles_per_s"],
        compute_s=s["compute_s"],
        peak_rss_main_gib=round(sampler.peak_self / 2**30, 3),
        peak_pss_with_workers_gib=round(sampler.peak_total / 2**30, 3),
        prediction=s["prediction"],
    )
    if args.slide is None or args.islands:
        record["attention_auc_vs_lesion"] = round(
            attention_auc(res.outputs["map"], Islands(args.size)), 4
        )
    forward = pure_forward(slide, args.forward_tiles, args.batch_size, args.device)
    record["pure_forward_tiles_per_s"] = round(forward["tiles_per_s"], 2)
    record["pure_forward_cpu_s_per_tile"] = round(forward["cpu_s_per_tile"], 4)
    record["slide_run_main_cpu_s_per_tile"] = round(
        record["main_process_cpu_s"] / s["tiles_done"], 4
    )
    record["slide_run_vs_pure_forward"] = round(s["tiles_per_s"] / forward["tiles_per_s"], 3)
    print(json.dumps(record, indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
