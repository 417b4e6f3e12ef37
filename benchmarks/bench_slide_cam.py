"""Grad-CAM family on a slide: seam score, lesion AUC and tiles per second.

A phantom slide: four synthetic fields (benign, invasive, in situ, benign; ``--size`` pixels
each at 0.5 um/px, the demo weights' pixel size) in a 2 x 2 mosaic with the lesion mask as
ground truth (``histoview.preprocessing.phantom``).

Part 1, in memory (the choices of ``explain.slide_cam``): the customNet demo weights' raw
Grad-CAM per tile (128 px, a quarter overlap), merged with each window (``linear`` cross-fade,
``hann``, ``crop`` = no blending) and each tile scale (``raw``: slide-wide p99.5, histoview's;
``tile``: each tile divided by its own maximum first). Prints the seam score (border / inside
differences, goal <= 1) and the AUC of the map against the lesion mask over the tissue cells.

Part 2, through the slide engine (``histoview.explain.slide_run.explain_slide``): each
method's wall time, tiles per second, the summary's seam score and DT threshold, the AUC of
``<stem>.<method>.ome.tif``, and the pure forward throughput of the processor on the same
tiles in memory (``slide_engine.forward_throughput``: ``process`` alone, i.e. the maps'
forward and backward) with the ratio (goal >= 0.85: reading, merging and writing hidden).

Run: ``python benchmarks/bench_slide_cam.py [--size 768] [--threads 2] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import map_auc  # noqa: E402

LABELS = ("benign", "invasive", "in_situ", "benign")


def mosaic(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(2 size, 2 size, 3) uint8 mosaic of four phantoms at 0.5 um/px and its lesion mask."""
    from histoview.preprocessing.phantom import make_phantom

    parts = [
        make_phantom(label, shape=(size, size), pixel_size_um=0.5, seed=seed)
        for seed, label in enumerate(LABELS)
    ]
    image = np.concatenate(
        [np.concatenate([p.image for p in row], 1) for row in (parts[:2], parts[2:])], 0
    )
    lesion = np.concatenate(
        [np.concatenate([p.malignant_mask for p in row], 1) for row in (parts[:2], parts[2:])], 0
    )
    return image, lesion


def cell_mask(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    pad = np.zeros((shape[0] * factor, shape[1] * factor), bool)
    h, w = (min(a, b) for a, b in zip(mask.shape, pad.shape))
    pad[:h, :w] = mask[:h, :w]
    return pad.reshape(shape[0], factor, shape[1], factor).mean((1, 3)) > 0.5


def in_memory(image: np.ndarray, lesion: np.ndarray) -> None:
    from histoview.explain.gradcam import GradCAM
    from histoview.explain.slide_cam import (
        WINDOWS,
        BlendAccumulator,
        CellGrid,
        blend_window_2d,
        tile_cams,
    )
    from histoview.explain.slide_norm import robust_histogram, seam_score, slide_scale
    from histoview.models.checkpoint import load_model
    from histoview.models.inputs import InputSpec
    from histoview.models.library import bundled_checkpoint

    model, meta = load_model(bundled_checkpoint("customnet-phantom"), device="cpu")
    spec = InputSpec.from_checkpoint(meta, model)
    T, n, o = 128, 8, 2
    f, S = T // n, T - o * (T // n)
    H, W = image.shape[:2]
    shape = (-(-H // f), -(-W // f))
    grid = CellGrid((n, n), (o, o), shape)
    gi, gj = grid.grid_shape
    pad = np.full((gi * S + T, gj * S + T, 3), 255, np.uint8)
    pad[:H, :W] = image
    engine, tiles, results = GradCAM(model), [(i, j) for i in range(gi) for j in range(gj)], []
    start = time.process_time()
    for b in range(0, len(tiles), 32):
        batch = tiles[b : b + 32]
        x = spec.images(np.stack([pad[i * S : i * S + T, j * S : j * S + T] for i, j in batch]))
        maps = tile_cams(engine, x, 1)
        results += [(ij, maps.maps[k]) for k, ij in enumerate(batch)]
    cpu = time.process_time() - start
    truth = cell_mask(lesion, f, shape)
    print(f"in memory: {len(tiles)} tiles of {T} px, {len(tiles) / cpu:.1f} tiles/s (CPU time)")
    print(f"{'window':8s} {'scale':5s} {'seam':>6s} {'AUC':>6s}")
    for kind in WINDOWS:
        for scale_kind in ("raw", "tile"):
            acc = BlendAccumulator(
                np.zeros((*shape, 1), np.float32),
                np.zeros(shape, np.float32),
                blend_window_2d((n, n), (o, o), kind),
            )
            for (i, j), m in results:
                if scale_kind == "tile" and m.max() > 0:
                    m = m / m.max()
                acc.add(*grid.origin(i, j), m)
            merged = acc.blended()[..., 0]
            scale = slide_scale(robust_histogram(lambda m=merged: [m]))
            values = scale.normalise(merged)
            seam = seam_score(values, grid)["seam_score"]
            print(f"{kind:8s} {scale_kind:5s} {seam:6.3f} {map_auc(values, truth):6.3f}")


def engine_runs(image, lesion, device: str, workers: int) -> None:
    import tifffile

    from histoview.explain.methods import get_method
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_engine import forward_throughput
    from histoview.explain.slide_processor import SlideContext, TileBox
    from histoview.explain.slide_run import explain_slide
    from histoview.io.pyramid import write_pyramidal_tiff

    tmp = Path(tempfile.mkdtemp(prefix="bench-slide-cam-"))
    slide = tmp / "mosaic.tif"
    write_pyramidal_tiff(slide, image, tile=256, pixel_size_um=0.5, min_size=256)
    print(f"\nslide engine on {image.shape[1]} x {image.shape[0]} px at 0.5 um/px ({device})")
    print(
        f"{'method':11s} {'window':7s} {'tiles':>5s} {'tiles/s':>7s} {'proc/s':>6s} "
        f"{'ratio':>5s} {'seam':>5s} {'AUC':>6s} {'DT thr':>6s}"
    )
    runs = [
        ("gradcam", "linear"),
        ("gradcam", "crop"),
        ("gradcam++", "linear"),
        ("dt-gradcam", "linear"),
    ]
    for method, window in runs:
        res = explain_slide(
            slide,
            method,
            out_dir=tmp / f"{method}-{window}",
            device=device,
            workers=workers,
            options={"window": window},
        )
        s = res.summary
        values = tifffile.imread(res.outputs["map"])[0]
        factor = s["map"]["cell_model_px"]
        truth = cell_mask(lesion, factor, values.shape)
        net, meta, sha = load_for_method(method, device=device)
        proc = get_method(method).slide(net, meta, sha, SlideContext(0.5, device=device))
        T = proc.tile_size
        tiles = np.stack(
            [
                image[r : r + T, c : c + T]
                for r in range(0, image.shape[0] - T, T)
                for c in range(0, image.shape[1] - T, T)
            ]
        )[:64]
        boxes = [TileBox(i, (0, i), (0, 0), (0, 0, T, T)) for i in range(len(tiles))]
        fwd = forward_throughput(proc, tiles, boxes, batch_size=16, device=device)
        thr = s["threshold"]
        print(
            f"{method:11s} {window:7s} {s['tiles_done']:5d} {s['tiles_per_s']:7.1f} "
            f"{fwd:6.1f} {s['tiles_per_s'] / fwd:5.2f} {s['seam']['seam_score']:5.2f} "
            f"{map_auc(values, truth):6.3f} {'' if thr is None else f'{thr:.3f}':>6s}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768, help="pixels per phantom field")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    image, lesion = mosaic(args.size)
    in_memory(image, lesion)
    engine_runs(image, lesion, args.device, args.workers)


if __name__ == "__main__":
    main()
