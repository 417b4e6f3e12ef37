"""Training reads samples through a DataLoader: the number of workers changes nothing."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch

from histoview.models.checkpoint import load_state_dict
from histoview.models.registry import get_model_config
from histoview.training.adapters import make_adapter
from histoview.training.datasets import discover_dataset
from histoview.training.engine import TrainOptions
from histoview.training.loader import EpochBatchSampler, make_loader
from histoview.training.run import iter_train_from_config, train_from_config

#: one model of each input kind, with every random augmentation of that kind switched on
CASES = {  # model, model_kwargs, input options, train options
    "image": ("test_cnn", {}, {}, {"mixup_alpha": 0.4}),
    "bag": ("amil", {"patch_size": 56}, {"instance_dropout": 0.3}, {}),
    "graph": ("test_rsf", {}, {"node_dropout": 0.2, "pixel_size_um": 0.5}, {}),
}


def _config(tmp_path, kind, num_workers, out, epochs=2):
    model, model_kwargs, input_opts, train = CASES[kind]
    if kind == "graph":  # a graph cache per run: the second run builds its graphs in workers
        input_opts = {**input_opts, "cache_dir": str(tmp_path / f"graphs-{out}")}
    return {
        "model": model,
        "model_kwargs": model_kwargs,
        "data": {"type": "phantom", "task": "binary", "n_per_class": 4, "seed": 3},
        "split": {"fractions": [0.5, 0.25, 0.25]},
        "input": input_opts,
        "train": {
            "epochs": epochs,
            "batch_size": 2,
            "lr": 0.01,
            "device": "cpu",
            "num_workers": num_workers,
            **train,
        },
        "output_dir": str(tmp_path / out),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "image",
        pytest.param("bag", marks=pytest.mark.slow),
        pytest.param("graph", marks=pytest.mark.slow),
    ],
)
def test_two_workers_train_the_same_weights_as_none(tmp_path, kind):
    runs = {}
    for workers in (0, 2):
        events = []
        result = train_from_config(
            _config(tmp_path, kind, workers, f"w{workers}"), progress=events.append
        )
        state, _ = load_state_dict(result["last"])
        steps = [e["loss"] for e in events if e["event"] == "step"]
        runs[workers] = (state, steps, result["history"], result["test"])
        assert not multiprocessing.active_children()  # workers stopped with the run
    (state0, steps0, hist0, test0), (state2, steps2, hist2, test2) = runs[0], runs[2]
    assert state0.keys() == state2.keys()
    for name in state0:
        torch.testing.assert_close(state2[name], state0[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps2, steps0, rtol=1e-5)
    assert len(steps0) > 0 and len(hist0) == len(hist2) == 2
    for h0, h2 in zip(hist0, hist2, strict=True):
        assert h0["val"]["confusion_matrix"] == h2["val"]["confusion_matrix"]
        assert h0["val"]["loss"] == pytest.approx(h2["val"]["loss"], rel=1e-5)
    assert test0["confusion_matrix"] == test2["confusion_matrix"]


def test_augmentation_depends_on_seed_epoch_and_sample_only():
    dataset = discover_dataset({"type": "phantom", "n_per_class": 2, "preset": "breakhis"})
    adapter = make_adapter(get_model_config("amil"), {"patch_size": 28}, {"instance_dropout": 0.5})
    loader = make_loader(adapter, dataset.samples, train=True, batch_size=3, seed=7)
    sampler = loader.batch_sampler
    assert isinstance(sampler, EpochBatchSampler) and len(loader) == 2
    item = loader.dataset[(1, 2)][0]
    assert torch.equal(loader.dataset[(1, 2)][0], item)  # the same key, the same draw
    assert item.shape != loader.dataset[(2, 2)][0].shape or not torch.equal(
        item, loader.dataset[(2, 2)][0]
    )  # another epoch, another draw
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append([key for batch in sampler for key in batch])
    assert orders[0] == orders[2] != orders[1]
    assert sorted(i for _, i in orders[1]) == list(range(len(dataset.samples)))
    assert {e for e, _ in orders[1]} == {1}


def test_adapters_pickle_without_their_memory_caches(tmp_path):
    dataset = discover_dataset({"type": "phantom", "n_per_class": 1})
    sample = dataset.samples[0]
    image = make_adapter(get_model_config("test_cnn"), {}, {})
    image.prepare(sample, train=False, rng=np.random.default_rng(0))
    assert len(image.cache) == 1
    assert len(pickle.loads(pickle.dumps(image)).cache) == 0  # a worker decodes its own
    image.release_memory()
    assert len(image.cache) == 0

    on_disk = make_adapter(get_model_config("test_rsf"), {}, {"cache_dir": str(tmp_path)})
    graph = on_disk.graph_for(sample)
    assert list(tmp_path.glob("*.npz")) and pickle.loads(pickle.dumps(on_disk))._graphs == {}
    on_disk.release_memory()
    assert on_disk._graphs == {}
    copy = pickle.loads(pickle.dumps(on_disk))
    np.testing.assert_array_equal(copy.graph_for(sample).edge_index, graph.edge_index)

    in_memory = make_adapter(get_model_config("test_rsf"), {}, {"cache_dir": None})
    in_memory._graphs[sample.key] = graph
    in_memory.release_memory()  # the only copy: kept, and sent to workers
    assert sample.key in pickle.loads(pickle.dumps(in_memory))._graphs


def test_cancel_with_workers_stops_them_and_resume_finishes(tmp_path):
    config = _config(tmp_path, "image", 2, "cancelled", epochs=2)
    steps = []
    gen = iter_train_from_config(config, should_stop=lambda: len(steps) >= 3)
    events = []
    try:
        while True:
            events.append(next(gen))
            if events[-1]["event"] == "step":
                steps.append(events[-1])
    except StopIteration as stop:
        result = stop.value
    assert result["cancelled"] and events[-1]["event"] == "cancelled"
    assert not multiprocessing.active_children()
    events = []
    train_from_config(config, progress=events.append)
    kinds = [e["event"] for e in events if e["event"] != "message"]
    assert kinds[0] == "resumed" and kinds.count("epoch_end") == 1 and kinds[-1] == "done"


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_num_workers_must_be_a_count(bad):
    assert TrainOptions.from_dict({"num_workers": 3}).num_workers == 3
    assert TrainOptions().num_workers == 0
    with pytest.raises(ValueError, match="num_workers"):
        TrainOptions.from_dict({"num_workers": bad})
