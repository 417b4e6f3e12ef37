"""Occlusion importance (seed 001, eq. 5) vs. one forward pass, for the three RSF models.

For random nuclei graphs (500, 1,500 and 3,000 nuclei, 13 node and 4 edge features, built
by :func:`histoview.preprocessing.graph.build_nuclei_graph` with the paper's 42 um edge
threshold) it prints the time of one forward pass, of exact occlusion importance with k = 1
and k = 2, and their ratio. Two layouts (``--layouts``): ``square``, nuclei spread so that
each has about 10 neighbours; ``bach``, the nuclei uniformly in a 2048 x 1536 image at
0.42 um/px, the paper's BACH setting (1,500 nuclei: about 15 neighbours each; the cost of
exact occlusion grows with the neighbourhoods' size)::

    python benchmarks/bench_occlusion.py [--threads 1] [--clock cpu] [--sizes 500 1500 3000]
        [--layouts square bach]

Each occlusion run is timed between two bursts of forward passes and the ratio is the
median over repeats, which keeps it meaningful on a busy machine (``--clock cpu`` measures
this process's CPU time instead of wall time). Untrained weights: the cost does not depend
on them. The index bookkeeping runs in the optional C extension when it was built
(``HISTOVIEW_NO_C=1`` measures the NumPy fallback). Takes about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from histoview.explain.graph import _c_index, occlusion_importance
from histoview.models import create_model
from histoview.preprocessing.graph import DEFAULT_THRESHOLD_UM, build_nuclei_graph
from histoview.preprocessing.nuclei import FEATURE_NAMES

MODELS = ("rsf", "rsf-edge", "rsf-attention")


def random_graph(n: int, *, mean_degree: float = 10.0, seed: int = 0, bach: bool = False):
    """Nuclei at uniform random positions, dense enough for ``mean_degree`` neighbours, or
    (``bach``) in a 2048 x 1536 image at 0.42 um/px."""
    rng = np.random.default_rng(seed)
    pixel_size_um = 0.42
    if bach:
        centroids = rng.uniform(0, 1, (n, 2)) * (1536, 2048)
    else:
        area_um2 = n * np.pi * DEFAULT_THRESHOLD_UM**2 / mean_degree
        side_px = np.sqrt(area_um2) / pixel_size_um
        centroids = rng.uniform(0, side_px, (n, 2))
    features = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    graph = build_nuclei_graph(
        centroids, pixel_size_um=pixel_size_um, features=features, feature_names=FEATURE_NAMES
    )
    return graph.to_pyg()


def measure(model, data, k: int, repeats: int, clock) -> tuple[float, float, float]:
    """Median forward time, median occlusion time and median ratio (per repeat)."""

    def forward_time() -> float:
        times = []
        with torch.no_grad():
            for _ in range(7):
                start = clock()
                model(data)
                times.append(clock() - start)
        return float(np.median(times))

    occlusion_importance(model, data, k=k)  # warm-up
    fwd, occ, ratio = [], [], []
    for _ in range(repeats):
        before = forward_time()
        start = clock()
        occlusion_importance(model, data, k=k)
        t = clock() - start
        f = float(np.median([before, forward_time()]))
        fwd.append(f)
        occ.append(t)
        ratio.append(t / f)
    return float(np.median(fwd)), float(np.median(occ)), float(np.median(ratio))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1500, 3000])
    parser.add_argument("--repeats", type=int, default=2, help="occlusion runs per cell")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--layouts", nargs="+", choices=("square", "bach"), default=["square", "bach"]
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    kernel = "C" if _c_index() is not None else "NumPy (no C extension built)"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
        f"index bookkeeping in {kernel}"
    )
    header = (
        f"{'model':<14}{'layout':>7}{'nuclei':>7}{'neigh':>6}{'forward':>10}"
        f"{'occl k=1':>11}{'ratio':>7}{'occl k=2':>11}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for layout in args.layouts:
        for n in args.sizes:
            data = random_graph(n, bach=layout == "bach")
            neighbours = data.num_edges / max(n, 1)
            for name in MODELS:
                model = create_model(name).eval()
                row, fwd = "", []
                for k in (1, 2):
                    f, t, ratio = measure(model, data, k, args.repeats, clock)
                    fwd.append(f)
                    row += f"{t * 1e3:>9.0f}ms{ratio:>7.1f}"
                head = f"{name:<14}{layout:>7}{n:>7}{neighbours:>6.1f}{np.median(fwd) * 1e3:>8.1f}ms"
                print(head + row, flush=True)


if __name__ == "__main__":
    main()
