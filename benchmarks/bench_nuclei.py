"""Benchmark the nuclei detector on MoNuSeg and the cell-graph builder (the nuclei graphs of
Sureka et al., 2020).

Prints, per MoNuSeg tile, the detection precision / recall / F1 (a detected centroid is a
true positive when it falls inside a not-yet-matched annotated nucleus outline, one-to-one;
tiles without XML annotations have none), the pixel Dice against the binary mask, and the
detector time; then the detector and graph-build times for a 2048 x 1536 image (a MoNuSeg
tile mirror-padded to that size) and the graph-build time for 5000 random nuclei at MoNuSeg
density.

Usage::

    python benchmarks/bench_nuclei.py [--data ../shared/data]

Exits 0 with a message when the data folder is absent (it lives outside the repository).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _monuseg import dice, match_detections, polygons_to_labels, read_aperio_xml

from histoview.preprocessing.graph import DEFAULT_THRESHOLD_UM, build_nuclei_graph
from histoview.preprocessing.nuclei import FEATURE_NAMES, detect_nuclei

REPO = Path(__file__).resolve().parents[1]
MONUSEG_PX = 0.2456  # um per pixel, MoNuSeg 40X


def _read_image(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))[..., :3]


def _read_mask(path: Path) -> np.ndarray:
    from skimage import io

    mask = np.asarray(io.imread(path))
    return (mask[..., 0] if mask.ndim == 3 else mask) > 0


def bench_monuseg(root: Path) -> tuple[list[dict], Path]:
    rows = []
    images = sorted((root / "images").glob("*.tif"))
    for path in images:
        image = _read_image(path)
        t0, c0 = time.perf_counter(), time.process_time()
        nuclei = detect_nuclei(image, MONUSEG_PX)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"tile": path.stem, "n": len(nuclei), "seconds": seconds, "cpu": cpu}
        mask_path = root / "masks" / f"{path.stem}.png"
        row["dice"] = dice(nuclei.labels, _read_mask(mask_path)) if mask_path.exists() else None
        xml = root / "annotations" / f"{path.stem}.xml"
        if xml.exists():
            truth = polygons_to_labels(read_aperio_xml(xml), image.shape[:2])
            row.update(match_detections(nuclei.centroids, truth))
        rows.append(row)
    return rows, images[0] if images else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_monuseg(rows: list[dict]) -> None:
    print(f"MoNuSeg, {MONUSEG_PX} um/px, default NucleiDetectorConfig")
    head = (
        f"{'tile':<26}{'true':>6}{'found':>7}{'prec':>7}{'recall':>8}{'F1':>7}{'Dice':>7}"
        f"{'sec':>7}{'cpu s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['tile']:<26}{_fmt(r.get('n_true'), 'd'):>6}{r['n']:>7}"
            f"{_fmt(r.get('precision'), '.3f'):>7}{_fmt(r.get('recall'), '.3f'):>8}"
            f"{_fmt(r.get('f1'), '.3f'):>7}{_fmt(r['dice'], '.3f'):>7}{r['seconds']:>7.2f}"
            f"{r['cpu']:>7.2f}"
        )
    with_xml = [r for r in rows if "f1" in r]
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    print("-" * len(head))
    if with_xml:
        mean = {k: float(np.mean([r[k] for r in with_xml])) for k in ("precision", "recall", "f1")}
        print(
            f"{f'mean of {len(with_xml)} tiles with XML':<39}{mean['precision']:>7.3f}"
            f"{mean['recall']:>8.3f}{mean['f1']:>7.3f}"
            f"{np.mean([r['dice'] for r in with_xml if r['dice'] is not None]):>7.3f}"
        )
    print(
        f"{f'mean of all {len(rows)} tiles':<61}{_fmt(np.mean(dices) if dices else None, '.3f'):>7}"
        f"{np.mean([r['seconds'] for r in rows]):>7.2f}{np.mean([r['cpu'] for r in rows]):>7.2f}"
    )
    print("(sec: wall-clock detector time; cpu s: its process CPU time, unaffected by other load)")


def _time_graph(centroids, features, px: float, repeats: int = 3):
    build_nuclei_graph(centroids[:10], pixel_size_um=px, features=features[:10])  # warm-up
    best, graph = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = build_nuclei_graph(
            centroids, threshold_um=DEFAULT_THRESHOLD_UM, pixel_size_um=px, features=features
        )
        best = min(best, time.perf_counter() - t0)
    return graph, best


def bench_graphs(tile: Path | None) -> None:
    print(f"\nCell graph, threshold {DEFAULT_THRESHOLD_UM} um (edge when d < t, w = 1 - d/t)")
    head = f"{'input':<52}{'nodes':>7}{'edges':>9}{'detect s':>10}{'cpu s':>7}{'graph s':>9}"
    print(head)
    print("-" * len(head))
    if tile is not None:
        image = _read_image(tile)
        big = np.pad(
            image,
            ((0, max(0, 2048 - image.shape[0])), (0, max(0, 1536 - image.shape[1])), (0, 0)),
            mode="reflect",
        )[:2048, :1536]
        t0, c0 = time.perf_counter(), time.process_time()
        nuclei = detect_nuclei(big, MONUSEG_PX)
        detect_s, detect_cpu = time.perf_counter() - t0, time.process_time() - c0
        graph, graph_s = _time_graph(nuclei.centroids, nuclei.features, MONUSEG_PX)
        print(
            f"{'2048x1536 (MoNuSeg tile mirror-padded), detected':<52}{len(graph):>7}"
            f"{graph.num_edges // 2:>9}{detect_s:>10.2f}{detect_cpu:>7.2f}{graph_s:>9.3f}"
        )
    # 5000 uniform random nuclei at MoNuSeg density (~400 nuclei per 1000 x 1000 px tile)
    density = 400 / (1000 * MONUSEG_PX) ** 2  # nuclei per um^2
    side_px = np.sqrt(5000 / density) / MONUSEG_PX
    rng = np.random.default_rng(0)
    cents = rng.uniform(0, side_px, size=(5000, 2))
    feats = rng.normal(size=(5000, len(FEATURE_NAMES))).astype(np.float32)
    graph, graph_s = _time_graph(cents, feats, MONUSEG_PX)
    label = f"5000 random nuclei, {side_px:.0f}x{side_px:.0f} px at {MONUSEG_PX} um/px"
    print(f"{label:<52}{len(graph):>7}{graph.num_edges // 2:>9}{'-':>10}{'-':>7}{graph_s:>9.3f}")
    print("(edges counted once per undirected pair; graph time is the best of 3 builds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder holding monuseg/ (default: ../shared/data from the repo)",
    )
    args = parser.parse_args(argv)
    root = args.data / "monuseg"
    if not (root / "images").is_dir():
        print(f"MoNuSeg data not found under {args.data.resolve()}; nothing to benchmark.")
        return 0
    t0 = time.perf_counter()
    rows, first = bench_monuseg(root)
    print_monuseg(rows)
    bench_graphs(first)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
