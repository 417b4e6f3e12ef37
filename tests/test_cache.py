"""Runs that share data build each nuclei graph once (cache keyed by content and settings)."""

from __future__ import annotations

import histoview.preprocessing.graph as graph_mod
from histoview.training.run import train_from_config


def _config(tmp_path, out, threshold=42.0):
    return {"model": "test_rsf_attention",
            "data": {"type": "phantom", "task": "in_situ_vs_invasive", "n_per_class": 2, "seed": 5},
            "split": {"fractions": [0.5, 0.25, 0.25]},
            "input": {"graph_threshold_um": threshold, "pixel_size_um": 0.5},
            "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
            "output_dir": str(tmp_path / out)}


def test_second_run_reuses_the_graphs_and_new_settings_rebuild(tmp_path, monkeypatch):
    calls = []
    real = graph_mod.graph_from_image

    def counting(*args, **kwargs):
        calls.append(kwargs.get("threshold_um"))
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_mod, "graph_from_image", counting)
    train_from_config(_config(tmp_path, "first"))
    built = len(calls)
    assert built >= 4  # every image of the first run
    train_from_config(_config(tmp_path, "second"))  # another run, same data and settings
    assert len(calls) == built
    train_from_config(_config(tmp_path, "third", threshold=30.0))  # other settings: rebuilt
    assert len(calls) > built
