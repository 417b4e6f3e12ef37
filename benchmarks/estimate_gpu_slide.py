"""AN ESTIMATE, NOT A MEASUREMENT: A-MIL + Grad-CAM on a 100,000 x 80,000 px 40X slide on one GPU.

Issue 17 asks for the time of a 100,000 x 80,000 40X slide on one H200-class GPU (goal: A-MIL
and Grad-CAM together in under 2 minutes) and, where no GPU is lent, for the GPU figures as an
estimate, labelled so. This script measures here what does not need the GPU and takes what
does as stated assumptions::

    python benchmarks/estimate_gpu_slide.py [--size 10000] [--gpu-tflops 100]
        [--reader-cores 14] [--width 100000 --height 80000]

Measured on this machine, on a phantom slide (``histoview phantom-slide``, 0.25 um/px = 40X):

* the tissue tiles of each method's grid (its model's tile size and pixel size, the slide's
  tissue mask), scaled by area to the big slide (the phantom's tissue fraction: real slides
  have more or less glass);
* CPU seconds to read and decode one tile at the model's pixel size (``read_rect``, JPEG
  tiles, all threads of this process) and to detect the tissue (scaled by area);
* floating-point operations per tile of each method's slide processor (A-MIL: the feature
  extractor and attention; Grad-CAM: forward and backward), counted by
  ``torch.utils.flop_counter.FlopCounterMode``;
* the engine's own CPU per tile outside reading and the forward pass (merging each tile into
  the slide maps, the store's writes, batching; one process, so serial on any machine): a
  run of the engine on the phantom's top half and one on the whole phantom, in this process
  with no reader workers, in batches of ``--gpu-batch`` tiles (the store's costs per batch are
  shared by its tiles): the CPU seconds each further tile costs (the difference of the two
  runs over the difference of their tiles; what a run pays once, the model load, finalize
  and the OME-TIFF writes, drops out) less the forward's and the reading's;
* the processor's CPU throughput here, for reference.

Assumed (arguments): ``--gpu-tflops``, the GPU's effective throughput on these models (default
100 TFLOPS: a tenth of an H200's dense BF16 peak of 989, what batch-32 convnets of this size
reach with mixed precision; small models stay far from peak), and ``--reader-cores``, the CPU
cores decoding tiles beside it (default 14 of the 16 the lent machine has), and
``--batch-overhead-ms`` per GPU batch of ``--gpu-batch`` tiles (kernel launches, copies to the
device; default 5 ms per 64 tiles). The engine overlaps reading with compute (``DataLoader``
workers), so a method's time is estimated as the largest of its GPU time, its reading time
over the reader cores and its serial engine time, plus tissue detection and a fixed start-up;
the sum of the three is printed too, as the no-overlap bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import tissue_tiles  # noqa: E402
from bench_slide_viewer import phantom  # noqa: E402

#: seconds a run spends before its first tile (imports, model load, CUDA context), assumed
START_S = 10.0


def method_figures(slide: Path, method: str, tiles_measured: int, batch: int) -> dict:
    """Tissue tiles, read CPU s per tile, FLOPs per tile and CPU tiles/s of ``method``; the
    forward pass and the whole run in batches of ``batch`` tiles (the GPU's: the engine's
    costs per batch are shared by its tiles)."""
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from histoview.explain.methods import get_method
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_engine import forward_throughput
    from histoview.explain.slide_processor import SlideContext
    from histoview.explain.slide_run import explain_slide
    from histoview.io import open_image
    from histoview.preprocessing.tissue import detect_tissue

    net, meta, sha = load_for_method(method, device="cpu")
    ctx = SlideContext(float(meta["pixel_size_um"]), device="cpu")
    proc = get_method(method).slide(net, meta, sha, ctx)
    with open_image(slide) as src:
        detect_tissue(src)  # once cold (imports, caches), then timed
        t0 = time.process_time()
        tissue = detect_tissue(src)
        tissue_cpu_s = time.process_time() - t0
        grid, boxes, tiles, read_cpu_s = tissue_tiles(
            src, proc, ctx.pixel_size_um, tissue, tiles_measured
        )
        every = grid.tissue_indices()
        slide_px = float(src.shape[0]) * float(src.shape[1])
        height, width = (int(v) for v in src.shape[:2])
    prep = proc.prepare_tile
    prepared = [prep(tile) if prep is not None else {} for tile in tiles]
    counted = min(16, len(boxes))
    with FlopCounterMode(display=False) as counter:
        proc.process(tiles[:counted], boxes[:counted], prepared[:counted])
    flops = counter.get_total_flops() / counted
    t0 = time.process_time()
    rate = forward_throughput(proc, tiles, boxes, batch_size=batch, device="cpu", prepared=prepared)
    forward_cpu_s = (time.process_time() - t0) / len(boxes)

    def run(region):
        """CPU seconds and tiles of the whole engine on ``region`` (reading in this process;
        no feature cache: A-MIL would replay the features an earlier run kept)."""
        with tempfile.TemporaryDirectory() as out:
            t0 = time.process_time()
            result = explain_slide(
                slide,
                method,
                out_dir=out,
                device="cpu",
                workers=0,
                tissue=tissue,
                feature_cache=False,
                batch_size=batch,
                region=region,
            )
            return time.process_time() - t0, result.stats.done_now

    # two runs, the top half and the whole slide: the difference is what each further tile
    # costs; the rest (model load, finalize, the OME-TIFF writes) is paid once per run
    half_cpu, half_tiles = run((0, 0, height // 2, width))
    full_cpu, full_tiles = run(None)
    run_cpu_s = (full_cpu - half_cpu) / max(1, full_tiles - half_tiles)
    fixed_cpu_s = full_cpu - run_cpu_s * full_tiles
    serial_s = max(0.0, run_cpu_s - forward_cpu_s - read_cpu_s)
    return {
        "method": method,
        "tile_px": int(proc.tile_size),
        "model_pixel_size_um": float(ctx.pixel_size_um),
        "tissue_tiles": int(len(every)),
        "slide_px": slide_px,
        "tissue_cpu_s": round(tissue_cpu_s, 3),
        "read_cpu_s_per_tile": round(read_cpu_s, 5),
        "gflops_per_tile": round(flops / 1e9, 3),
        "forward_cpu_s_per_tile": round(forward_cpu_s, 5),
        "run_cpu_s_per_tile": round(run_cpu_s, 5),
        "run_fixed_cpu_s": round(fixed_cpu_s, 2),
        "runs_tiles": [int(half_tiles), int(full_tiles)],
        "serial_engine_cpu_s_per_tile": round(serial_s, 5),
        "cpu_tiles_per_s_here": round(rate, 2),
        "torch_threads_here": torch.get_num_threads(),
    }


def estimate(fig: dict, area_px: float, args) -> dict:
    scale = area_px / fig["slide_px"]
    tiles = fig["tissue_tiles"] * scale
    gpu_s = tiles * fig["gflops_per_tile"] * 1e9 / (args.gpu_tflops * 1e12)
    gpu_s += tiles / args.gpu_batch * args.batch_overhead_ms / 1000
    read_s = tiles * fig["read_cpu_s_per_tile"] / args.reader_cores
    serial_s = tiles * fig["serial_engine_cpu_s_per_tile"]
    tissue_s = fig["tissue_cpu_s"] * scale
    return {
        "method": fig["method"],
        "tiles": round(tiles),
        "gpu_s": round(gpu_s, 1),
        "read_s": round(read_s, 1),
        "serial_s": round(serial_s, 1),
        "tissue_s": round(tissue_s, 1),
        "estimate_s": round(START_S + tissue_s + max(gpu_s, read_s, serial_s), 1),
        "no_overlap_s": round(START_S + tissue_s + gpu_s + read_s + serial_s, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10000, help="phantom slide measured (px)")
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--height", type=int, default=80_000)
    ap.add_argument("--gpu-tflops", type=float, default=100.0, help="effective, assumed")
    ap.add_argument("--reader-cores", type=int, default=14, help="decoding tiles, assumed")
    ap.add_argument("--gpu-batch", type=int, default=64, help="tiles per GPU batch, assumed")
    ap.add_argument("--batch-overhead-ms", type=float, default=5.0, help="per GPU batch, assumed")
    ap.add_argument("--tiles", type=int, default=64, help="tiles read and counted per method")
    ap.add_argument("--slides", type=Path, default=Path("/tmp/hv-slides"))
    ap.add_argument("--methods", default="amil,gradcam")
    args = ap.parse_args(argv)
    args.slides.mkdir(parents=True, exist_ok=True)
    slide = phantom(args.size, args.slides)
    area = float(args.width) * float(args.height)
    figures, rows = [], []
    for method in args.methods.split(","):
        fig = method_figures(slide, method, args.tiles, args.gpu_batch)
        figures.append(fig)
        rows.append(estimate(fig, area, args))
    print("ESTIMATE, NOT MEASURED ON A GPU")
    print(
        f"{args.width:,} x {args.height:,} px at 0.25 um/px; assumed: {args.gpu_tflops:g} "
        f"effective TFLOPS, {args.batch_overhead_ms:g} ms per batch of {args.gpu_batch}, "
        f"{args.reader_cores} reader cores, {START_S:g} s start-up"
    )
    print("| method | tiles | GPU s | reading s | serial engine s | tissue s | estimate s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['tiles']:,} | {r['gpu_s']} | {r['read_s']} | "
            f"{r['serial_s']} | {r['tissue_s']} | {r['estimate_s']} |"
        )
    total = sum(r["estimate_s"] for r in rows)
    worst = sum(r["no_overlap_s"] for r in rows)
    print(f"all methods: {total:.0f} s estimated ({worst:.0f} s without overlap); goal 120 s")
    print(json.dumps({"measured_here": figures, "estimate": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
