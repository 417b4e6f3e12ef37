"""Nuclei-graph importance on held-out phantoms: are the top-20% nuclei the malignant ones?

For each held-out in-situ and invasive phantom, nuclei are detected and the cell graph is
built (once, shared by every checkpoint given); each RSF+Attention model (default: the
bundled demo weights) then scores every nucleus by attention and by 1-hop occlusion. A
detected nucleus is matched to the phantom's ground truth by its centroid. Per image we
take the share of two kinds of nuclei among the top 20% most important against their share
among all nuclei (what a random ranking gives):

* malignant: the tumour cells (in situ and invasive). The target: at least twice the
  share expected by chance.
* ring (in situ only): the myoepithelial ring that bounds each duct, after Sureka et al.,
  2020 (Fig. 3): "nuclei on gland boundary are relatively more highlighted in the in-situ
  breast cancer".

Ratios are the mean top-20% share over the mean chance share of the images of a class.

Usage: python benchmarks/bench_graph_importance.py [--checkpoint CKPT ...] [--n 24]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from histoview.explain.graph import explain_graph
from histoview.explain.run import load_for_method
from histoview.preprocessing.graph import build_nuclei_graph
from histoview.preprocessing.nuclei import detect_nuclei
from histoview.preprocessing.phantom import make_phantom

HELD_OUT_SEED = 9_500_000
KINDS = ("in_situ", "invasive")


def truth_for_detections(ph, centroids) -> tuple[np.ndarray, np.ndarray]:
    """(malignant, ring) flags for detected centroids via the phantom's instance image.

    Malignant nuclei are the tumour cells; ring nuclei are the myoepithelial ring of an
    in-situ duct (boundary nuclei inside the lesion outline).
    """
    rc = np.clip(np.round(centroids).astype(int), 0, np.array(ph.nuclei_labels.shape) - 1)
    inst = ph.nuclei_labels[rc[:, 0], rc[:, 1]]
    hit = inst > 0
    malignant = np.zeros(len(rc), bool)
    boundary = np.zeros(len(rc), bool)
    malignant[hit] = ph.nucleus_malignant[inst[hit] - 1]
    boundary[hit] = ph.nucleus_boundary[inst[hit] - 1]
    ring = boundary & ph.malignant_mask[rc[:, 0], rc[:, 1]]
    return malignant, ring


def top_share(values, flags, fraction=0.2) -> float:
    k = max(1, int(round(len(values) * fraction)))
    top = np.argsort(-values, kind="stable")[:k]
    return float(flags[top].mean())


def held_out_graphs(n: int, threshold_um: float, seed: int = HELD_OUT_SEED):
    """(kind, graph, malignant flags, ring flags) for n held-out phantoms, half of each kind."""
    out = []
    for i in range(n):
        kind = KINDS[i % 2]
        ph = make_phantom(kind, preset="breakhis", seed=seed + i)
        nuclei = detect_nuclei(ph.image, ph.pixel_size_um)
        graph = build_nuclei_graph(
            nuclei, threshold_um=threshold_um, pixel_size_um=ph.pixel_size_um
        )
        out.append((kind, graph, *truth_for_detections(ph, graph.centroids)))
    return out


def evaluate(net, meta, graphs) -> dict:
    """Per importance: rows (kind, top malignant, chance, top ring, chance); accuracy; time."""
    classes = tuple(meta["classes"])
    rows = {"attention": [], "occlusion": []}
    correct, seconds = 0, {"attention": 0.0, "occlusion": 0.0}
    for kind, graph, malignant, ring in graphs:
        for imp in rows:
            t0 = time.perf_counter()
            expl = explain_graph(net, graph, importance=imp, classes=classes)
            seconds[imp] += time.perf_counter() - t0
            rows[imp].append(
                (
                    kind,
                    top_share(expl.values, malignant),
                    malignant.mean(),
                    top_share(expl.values, ring),
                    ring.mean(),
                )
            )
        correct += int(expl.predicted_label == kind)
    return {"rows": rows, "accuracy": correct / len(graphs), "seconds": seconds}


def ratio(rows, kind: str, top: int, base: int) -> tuple[float, float, float]:
    sel = [r for r in rows if kind == "all" or r[0] == kind]
    t, b = float(np.mean([r[top] for r in sel])), float(np.mean([r[base] for r in sel]))
    return t, b, t / max(b, 1e-9)


def report(name: str, result: dict, n: int) -> None:
    print(
        f"\n{name}: RSF+Attention on {n} held-out phantoms, classification accuracy "
        f"{result['accuracy']:.2f}"
    )
    print(
        f"{'importance':10s} {'images':9s} {'top-20% malignant':>18s} {'chance':>7s} {'ratio':>6s}"
        f" {'top-20% ring':>13s} {'chance':>7s} {'ratio':>6s}"
    )
    for imp, rows in result["rows"].items():
        for kind in (*KINDS, "all"):
            t, b, r = ratio(rows, kind, 1, 2)
            line = f"{imp:10s} {kind:9s} {t:18.3f} {b:7.3f} {r:6.2f}"
            if kind == "in_situ":
                rt, rb, rr = ratio(rows, kind, 3, 4)
                line += f" {rt:13.3f} {rb:7.3f} {rr:6.2f}"
            print(line)
    for imp, rows in result["rows"].items():
        t, b, r = ratio(rows, "all", 1, 2)
        rt, rb, rr = ratio(rows, "in_situ", 3, 4)
        print(
            f"  {imp:10s} malignant nuclei {t:.3f} vs {b:.3f}: {r:.2f} x chance (target >= 2);"
            f" in situ ring {rt:.3f} vs {rb:.3f}: {rr:.2f} x"
        )
    sec = result["seconds"]
    print(
        f"  time per image (graph given): attention {sec['attention'] / n:.3f} s,"
        f" occlusion {sec['occlusion'] / n:.3f} s"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        help="checkpoint to evaluate (repeat for several; default: bundled weights)",
    )
    ap.add_argument(
        "--n", type=int, default=24, help="held-out phantoms (half in situ, half invasive)"
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_SEED,
        help="seed of the first held-out phantom (training configs draw theirs below 9,000,000)",
    )
    args = ap.parse_args(argv)
    models = [load_for_method("graph", checkpoint=c) for c in (args.checkpoint or [None])]
    thresholds = {
        float((meta.get("input") or {}).get("graph_threshold_um", 42.0)) for _, meta, _ in models
    }
    graphs = {t: held_out_graphs(args.n, t, args.seed) for t in thresholds}
    for ckpt, (net, meta, _sha) in zip(args.checkpoint or ["bundled demo weights"], models):
        t = float((meta.get("input") or {}).get("graph_threshold_um", 42.0))
        report(str(ckpt), evaluate(net, meta, graphs[t]), args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
