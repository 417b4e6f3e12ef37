"""The bundled RSF+Attention demo weights: do they call phantoms right and point at the lesion?

What a user of ``histoview demo`` relies on: on held-out phantoms (seeds no training set
uses) the bundled model calls in situ and invasive carcinoma correctly, and the nuclei its
attention ranks highest are the tumour cells, at least twice as often as a random ranking
would pick them (``benchmarks/bench_graph_importance.py`` measures the same on 24 images).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch_geometric")

from histoview.explain.graph import explain_graph  # noqa: E402
from histoview.explain.run import load_for_method  # noqa: E402
from histoview.preprocessing.graph import build_nuclei_graph  # noqa: E402
from histoview.preprocessing.nuclei import detect_nuclei  # noqa: E402
from histoview.preprocessing.phantom import make_phantom  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tumour_flags(ph, centroids) -> np.ndarray:
    """Whether each detected centroid lies in a ground-truth tumour nucleus."""
    rc = np.clip(np.round(centroids).astype(int), 0, np.array(ph.nuclei_labels.shape) - 1)
    inst = ph.nuclei_labels[rc[:, 0], rc[:, 1]]
    flags = np.zeros(len(rc), bool)
    flags[inst > 0] = ph.nucleus_malignant[inst[inst > 0] - 1]
    return flags


def test_bundled_attention_ranks_tumour_nuclei_first():
    net, meta, _ = load_for_method("graph")
    assert meta.get("synthetic") and meta["model"] == "rsf-attention"
    classes = tuple(meta["classes"])
    top, base = [], []
    for i in range(6):
        kind = ("in_situ", "invasive")[i % 2]
        ph = make_phantom(kind, preset="breakhis", seed=9_800_000 + i)
        nuclei = detect_nuclei(ph.image, ph.pixel_size_um)
        graph = build_nuclei_graph(nuclei, threshold_um=42.0, pixel_size_um=ph.pixel_size_um)
        expl = explain_graph(net, graph, importance="attention", classes=classes)
        assert expl.predicted_label == kind
        tumour = tumour_flags(ph, graph.centroids)
        k = int(round(0.2 * len(tumour)))
        top.append(tumour[np.argsort(-expl.values, kind="stable")[:k]].mean())
        base.append(tumour.mean())
    assert np.mean(top) >= 2 * np.mean(base), (top, base)
