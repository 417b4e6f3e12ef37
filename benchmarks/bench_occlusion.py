"""Occlusion importance (Sureka et al., 2020, eq. 5) vs. one forward pass, for the RSF models.

For random nuclei graphs (500, 1,500 and 3,000 nuclei, 13 node and 4 edge features, built
by :func:`histoview.preprocessing.graph.build_nuclei_graph` with the paper's 42 um edge
threshold) it prints the time of one forward pass and of occlusion importance with k = 1
and k = 2, in seconds and as a multiple of the forward pass, and which engine computed it
(the incremental engine of :mod:`histoview.explain.occlusion`, or the definition where the
engine does not apply or its check failed). Two layouts (``--layouts``): ``square``, nuclei
spread so that each has about 10 neighbours; ``bach``, the nuclei uniformly in a
2048 x 1536 image at 0.42 um/px, the paper's BACH setting (1,500 nuclei: about 14
neighbours each; the cost of exact occlusion grows with the neighbourhoods' size)::

    python benchmarks/bench_occlusion.py [--threads 1] [--clock cpu] [--sizes 500 1500 3000]
        [--layouts square bach] [--repeats 3]

Times are the smallest over repeats (the least disturbed by other work on the machine) and
the ratio is to the smallest forward-pass time; ``--clock cpu`` measures this process's CPU
time instead of wall time. Untrained weights: the cost does not depend on them. On a machine
busy with other work, torch's OpenMP threads spin while they wait and multiply the time
taken with more than one thread; ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``) avoids
that.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from histoview.explain.graph import occlusion_importance
from histoview.explain.occlusion import supports_incremental
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


def occlusion_run(model, data, k: int) -> str:
    """Occlusion importance once; returns the engine that computed it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        occlusion_importance(model, data, k=k)
    if any("incremental occlusion disagrees" in str(w.message) for w in caught):
        return "definition (check failed)"
    return "incremental" if supports_incremental(model) else "definition"


def measure(model, data, k: int, repeats: int, clock) -> tuple[float, float, str]:
    """Smallest forward time, smallest occlusion time (seconds) and the engine used."""
    with torch.no_grad():
        model(data)  # warm-up
        forward = []
        for _ in range(5 * repeats):
            start = clock()
            model(data)
            forward.append(clock() - start)
    engine = occlusion_run(model, data, k)  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        engine = occlusion_run(model, data, k)
        times.append(clock() - start)
    return min(forward), min(times), engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1500, 3000])
    parser.add_argument("--repeats", type=int, default=3, help="occlusion runs per cell")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--layouts", nargs="+", choices=("square", "bach"), default=["square", "bach"]
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock")
    header = (
        f"{'model':<14}{'layout':>7}{'nuclei':>7}{'neigh':>6}{'forward':>9}"
        f"{'occl k=1':>10}{'ratio':>7}{'occl k=2':>10}{'ratio':>7}  engine"
    )
    print(header)
    print("-" * (len(header) + 10))
    for layout in args.layouts:
        for n in args.sizes:
            data = random_graph(n, bach=layout == "bach")
            neighbours = data.num_edges / max(n, 1)
            for name in MODELS:
                model = create_model(name).eval()
                forward, times, engines = [], [], set()
                for k in (1, 2):
                    f, t, engine = measure(model, data, k, args.repeats, clock)
                    forward.append(f)
                    times.append(t)
                    engines.add(engine)
                f = min(forward)
                row = "".join(f"{t:>9.3f}s{t / f:>7.1f}" for t in times)
                head = f"{name:<14}{layout:>7}{n:>7}{neighbours:>6.1f}{f:>8.4f}s"
                print(f"{head}{row}  {', '.join(sorted(engines))}", flush=True)


if __name__ == "__main__":
    main()
