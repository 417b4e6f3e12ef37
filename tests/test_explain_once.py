"""Work done once per image and model: the pixel-size estimate is remembered, the nuclei the
estimator found are the graph method's, the graph's attention comes from one forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.preprocessing import scale
from histoview.preprocessing.phantom import make_phantom


@pytest.fixture
def image():
    return make_phantom("invasive", preset="breakhis", seed=11).image


def _count(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_the_estimate_is_made_once_per_image(image, monkeypatch):
    scale.clear_cache()
    calls = _count(monkeypatch, scale, "_estimate")
    first = scale.estimate_pixel_size(image)
    again = scale.estimate_pixel_size(image.copy())  # the same pixels in another array
    assert again is first and len(calls) == 1
    assert scale.remembered_estimate(image) is first
    other = image.copy()
    other[:40, :40] = 255  # other pixels: estimated anew
    scale.estimate_pixel_size(other)
    assert len(calls) == 2
    scale.estimate_pixel_size(image, min_nuclei=60)  # other arguments: estimated anew
    assert len(calls) == 3
    assert "nuclei" not in first.describe()


def test_the_estimate_keeps_the_nuclei_detected_at_it(image):
    from histoview.preprocessing.nuclei import detect_nuclei

    scale.clear_cache()
    est = scale.estimate_pixel_size(image)
    assert est.reliable and est.nuclei is not None
    again = detect_nuclei(image, est.pixel_size_um)
    np.testing.assert_array_equal(est.nuclei.centroids, again.centroids)
    big = np.tile(image, (3, 3, 1))  # sampled in tiles: no whole-image nuclei
    tiled = scale.estimate_pixel_size(big, max_pixels=1_100_000)
    assert tiled.nuclei is None


def test_graph_method_detects_no_nuclei_beyond_the_estimate(image, monkeypatch):
    pytest.importorskip("torch_geometric")
    from histoview.explain.run import explain_array, load_for_method
    from histoview.preprocessing import nuclei

    net, meta, sha = load_for_method("graph")
    scale.clear_cache()
    calls = _count(monkeypatch, nuclei, "detect_nuclei")
    expl = explain_array(image, "graph", net, meta, sha)
    est = scale.remembered_estimate(image)
    assert expl.extra["pixel_size_source"] == "estimated"
    assert expl.extra["pixel_size_um"] == est.pixel_size_um
    assert len(calls) == est.iterations  # the estimator's runs, none more
    np.testing.assert_array_equal(expl.geometry.centroids, est.nuclei.centroids)
    # an explanation made with the estimate given as a number (histoview explain) reuses them
    expl2 = explain_array(
        image,
        "graph",
        net,
        meta,
        sha,
        pixel_size_um=est.pixel_size_um,
        pixel_size_source="estimated",
        importance="occlusion",
    )
    assert len(calls) == est.iterations
    np.testing.assert_array_equal(expl2.geometry.centroids, est.nuclei.centroids)


@pytest.mark.parametrize("classwise", [False, True])
def test_attention_and_prediction_from_one_forward_pass(classwise):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data

    from histoview.explain.graph import (
        _attention_and_probabilities,
        _probabilities,
        attention_importance,
    )
    from histoview.models import create_model
    from histoview.models.graph_nets import EDGE_FEATURES, NODE_FEATURES

    torch.manual_seed(0)
    model = create_model("test_rsf_attention", num_classes=3, classwise_attention=classwise).eval()
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 1, (30, 2))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    src, dst = np.nonzero((d < 0.3) & ~np.eye(30, dtype=bool))
    data = Data(
        x=torch.tensor(rng.normal(size=(30, NODE_FEATURES)), dtype=torch.float32),
        edge_index=torch.tensor(np.stack([src, dst]), dtype=torch.long),
        edge_attr=torch.tensor(rng.uniform(0, 1, (len(src), EDGE_FEATURES)), dtype=torch.float32),
    )
    with torch.no_grad():
        probs = _probabilities(model, data)[0].numpy()
    for target in (None, 0, 1, 2):
        got_p, got_a = _attention_and_probabilities(model, data, target)
        np.testing.assert_allclose(got_p, probs, rtol=1e-5, atol=1e-7)
        expected = attention_importance(
            model, data, int(np.argmax(probs)) if target is None else target
        )
        np.testing.assert_allclose(got_a, expected, rtol=1e-5, atol=1e-7)
    assert _attention_and_probabilities(create_model("test_rsf").eval(), data, None) is None
