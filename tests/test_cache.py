"""Runs that share data build each nuclei graph once (cache keyed by content and settings)."""

from __future__ import annotations

import histoview.preprocessing.nuclei as nuclei_mod
from histoview.training.run import train_from_config


def _config(tmp_path, out, threshold=42.0):
    return {
        "model": "test_rsf_attention",
        "data": {"type": "phantom", "task": "in_situ_vs_invasive", "n_per_class": 2, "seed": 5},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "input": {"graph_threshold_um": threshold, "pixel_size_um": 0.5},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
        "output_dir": str(tmp_path / out),
    }


def test_second_run_reuses_the_graphs_and_new_settings_rebuild(tmp_path, monkeypatch):
    calls = []
    real = nuclei_mod.detect_nuclei

    def counting(*args, **kwargs):  # building a graph starts with detecting its nuclei
        calls.append(args[1:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(nuclei_mod, "detect_nuclei", counting)
    train_from_config(_config(tmp_path, "first"))
    built = len(calls)
    assert built >= 4  # every image of the first run
    train_from_config(_config(tmp_path, "second"))  # another run, same data and settings
    assert len(calls) == built
    train_from_config(_config(tmp_path, "third", threshold=30.0))  # other settings: rebuilt
    assert len(calls) > built


def test_node_dropout_thins_training_graphs_only(tmp_path):
    """``input: {node_dropout: p}`` leaves out a random share p of the nuclei of each training
    graph (with their edges), differently each draw; evaluation graphs are whole."""
    import numpy as np
    import pytest
    import torch

    from histoview.models.registry import get_model_config
    from histoview.preprocessing.graph import build_nuclei_graph
    from histoview.training.adapters import make_adapter

    rng = np.random.default_rng(0)
    centroids = rng.uniform(0, 400, (300, 2))
    graph = build_nuclei_graph(
        centroids,
        pixel_size_um=0.5,
        features=rng.normal(size=(300, 13)),
        feature_names=[f"f{i}" for i in range(13)],
    )
    adapter = make_adapter(
        get_model_config("test_rsf"), {}, {"node_dropout": 0.3, "cache_dir": None}
    )
    adapter.graph_for = lambda sample: graph
    full = adapter.prepare(None, train=False, rng=rng)
    assert full.num_nodes == 300 and full.num_edges == graph.edge_index.shape[1]
    a, b = (adapter.prepare(None, train=True, rng=rng) for _ in range(2))
    for g in (a, b):
        assert 150 < g.num_nodes < 250  # about 70 % kept
        assert int(g.edge_index.max()) < g.num_nodes and g.edge_attr.shape[0] == g.num_edges
        assert g.num_edges < full.num_edges
    assert not torch.equal(a.x, b.x)
    assert adapter.describe()["node_dropout"] == 0.3
    with pytest.raises(ValueError, match="node_dropout"):
        make_adapter(get_model_config("test_rsf"), {}, {"node_dropout": 1.0})
