"""Nuclei graph on a slide: detection throughput, and graph, prediction and importance at scale.

Usage::

    python benchmarks/bench_slide_graph.py [--size 8192] [--workers 2] [--nuclei 100000]
        [--threads 1] [--skip-slide] [--skip-graph]

1. **Detection** on a synthetic ``size`` x ``size`` island slide at 0.25 um/px (the slide of
   ``bench_slide_engine.py``: phantom H&E texture on glass): nuclei per second of
   :func:`histoview.preprocessing.slide_nuclei.detect_slide_nuclei` in this process (CPU
   time), and the whole ``explain_slide(..., "graph")`` run through the slide engine with
   ``--workers`` loader processes (wall time, peak memory of this process and its workers).
2. **The graph at scale**: ``--nuclei`` nuclei at the phantoms' density (3.1e-3 per um^2, about
   17 neighbours within 42 um each), their morphology resampled from the nuclei of step 1
   (phantom nuclei, so the bundled RSF+Attention weights see what they were trained on), at
   random places: the time to build the slide graph (k-d tree), the exact slide prediction
   with attention (windows of 1024 um), 1-hop occlusion on 256 + 2 x 64 um windows, the
   GeoJSON (seconds, megabytes), the density map, and the edges of a 1 x 1 mm view.

Times are CPU seconds of this process (``time.process_time``; torch limited to ``--threads``)
unless labelled wall; the peak resident memory is this process's. Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def detection(out: Path, size: int, workers: int) -> tuple[dict, np.ndarray]:
    from bench_slide_engine import MemorySampler, write_slide

    from histoview.explain.slide_run import explain_slide
    from histoview.io import open_image
    from histoview.preprocessing.slide_nuclei import detect_slide_nuclei, load_slide_nuclei

    slide = out / "islands.tif"
    write_slide(slide, size)
    rec: dict = {"slide_px": size, "slide_um_per_px": 0.25}
    with open_image(slide) as src:
        from histoview.preprocessing.tissue import detect_tissue

        tissue = detect_tissue(src)
        start = time.process_time()
        nuclei = detect_slide_nuclei(src, 0.5, tissue=tissue)
        cpu = time.process_time() - start
    rec["standalone"] = {
        "nuclei": len(nuclei),
        "tissue_tiles": nuclei.stats["tissue_tiles"],
        "cpu_s": round(cpu, 2),
        "nuclei_per_cpu_s": round(len(nuclei) / cpu, 1),
        "cut": nuclei.stats["cut"],
        "merged": nuclei.stats["merged"],
    }
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    res = explain_slide(slide, "graph", out_dir=out, workers=workers, overwrite=True)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    s = res.summary
    engine_nuclei = load_slide_nuclei(out / s["nuclei_files"]["nuclei"])
    rec["engine"] = {
        "workers": workers,
        "nuclei": s["num_nuclei"],
        "wall_s": round(wall, 2),
        "nuclei_per_wall_s": round(s["num_nuclei"] / wall, 1),
        "tiles": s["tiles_total"],
        "detection": s["detection"],
        "graph_cpu_s": s["timings_cpu_s"],
        "peak_rss_mb": round(sampler.peak_self / 2**20, 1),
        "peak_pss_with_workers_mb": round(sampler.peak_total / 2**20, 1),
        "geojson_mb": round((out / s["nuclei_files"]["geojson"]).stat().st_size / 2**20, 2),
        "prediction": s["prediction"],
    }
    return rec, engine_nuclei.features[:, :-1]  # morphology (the last column is importance)


def graph_at_scale(n: int, features: np.ndarray, out: Path) -> dict:
    import torch

    from histoview.explain.run import load_for_method
    from histoview.explain.slide_graph import (
        build_slide_graph,
        explain_slide_graph,
        pooled_prediction,
    )
    from histoview.explain.slide_graph_outputs import (
        NucleiView,
        density_map,
        write_nuclei_geojson,
    )
    from histoview.models.inputs import GRAPH_THRESHOLD_UM
    from histoview.preprocessing.nuclei import FEATURE_NAMES
    from histoview.preprocessing.slide_nuclei import SlideNuclei

    rng = np.random.default_rng(0)
    p0, density = 0.25, 3.1e-3
    side = int(np.sqrt(n / density) / p0) + 1
    nuclei = SlideNuclei(
        centroids=rng.uniform(0, side, (n, 2)),
        features=features[rng.integers(0, len(features), n)].astype(np.float32),
        feature_names=FEATURE_NAMES,
        tile=np.zeros(n, np.int32),
        tile_boxes=np.zeros((0, 4), np.int64),
        pixel_size_um=0.5,
        level0_pixel_size_um=p0,
        level0_shape=(side, side),
        region=(0, 0, side, side),
    )
    model = load_for_method("graph", device="cpu")[0]
    rec: dict = {"nuclei": n, "side_mm": round(side * p0 / 1000, 2)}
    t = time.process_time()
    graph = build_slide_graph(nuclei, threshold_um=GRAPH_THRESHOLD_UM)
    rec["graph_build_cpu_s"] = round(time.process_time() - t, 3)
    rec["edges_undirected"] = graph.num_edges // 2
    rec["mean_degree"] = round(graph.num_edges / n, 2)
    del graph
    t = time.process_time()
    with torch.no_grad():
        pooled_prediction(model, nuclei, threshold_um=GRAPH_THRESHOLD_UM)
    rec["prediction_with_attention_cpu_s"] = round(time.process_time() - t, 2)
    rec["peak_rss_after_prediction_mb"] = round(_peak_rss_mb(), 1)
    t = time.process_time()
    result = explain_slide_graph(model, nuclei, importance="occlusion")
    rec["occlusion_total_cpu_s"] = round(time.process_time() - t, 2)
    rec["occlusion_windows"] = len(result.windows)
    rec["occlusion_windows_cpu_s"] = round(result.timings["windows_s"], 2)
    rec["mean_window_graph_nuclei"] = round(float(result.window_counts[:, 1].mean()), 1)
    rec["peak_rss_after_occlusion_mb"] = round(_peak_rss_mb(), 1)
    t = time.process_time()
    path = write_nuclei_geojson(out / "big.geojson", result, overwrite=True)
    rec["geojson_cpu_s"] = round(time.process_time() - t, 2)
    rec["geojson_mb"] = round(path.stat().st_size / 2**20, 1)
    t = time.process_time()
    array = density_map(result)[0]
    rec["density_map_cpu_s"] = round(time.process_time() - t, 3)
    rec["density_map_shape"] = list(array.shape)
    view = 1000 / p0  # 1 mm
    t = time.process_time()
    viewer = NucleiView(result.nuclei, result.threshold_um)
    rec["view_tree_cpu_s"] = round(time.process_time() - t, 3)
    t = time.process_time()
    _, weight, _ = viewer.edges((side / 2, side / 2, view, view))
    rec["edges_in_1mm_view"] = len(weight)
    rec["edges_in_view_cpu_s"] = round(time.process_time() - t, 3)
    return rec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nuclei", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-slide", action="store_true")
    parser.add_argument("--skip-graph", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    record: dict = {"torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.skip_slide:
            from histoview.preprocessing.nuclei import detect_nuclei
            from histoview.preprocessing.phantom import make_phantom

            img = make_phantom("invasive", shape=(1024, 1024), pixel_size_um=0.5).image
            features = detect_nuclei(img, 0.5).features
        else:
            record["detection"], features = detection(out, args.size, args.workers)
        if not args.skip_graph:
            record["graph"] = graph_at_scale(args.nuclei, features, out)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
