"""Deletion / insertion faithfulness (histoview.explain.faithfulness).

The "model" here knows the right answer: its malignant probability is the
fraction of red pixels (saturating at 10 % of the image), so an explanation
that points at the red tissue must delete the evidence fastest (lowest
deletion AUC) and restore it fastest (highest insertion AUC).
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw

from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.explain.faithfulness import (
    FaithfulnessResult,
    auc,
    baseline_image,
    deletion_insertion,
    element_rank_map,
)
from histoview.explain.methods import predictor_for
from histoview.models.inputs import forget_graphs
from histoview.preprocessing.patches import extract_patches

CLASSES = ("benign", "malignant")
PROBS = np.array([0.1, 0.9])
RED = (220, 20, 20)


def red_fraction_model(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 2): P(malignant) = red fraction / 0.1, clipped."""
    r, g, b = (images[..., i].astype(int) for i in range(3))
    red = ((r > 150) & (g < 100) & (b < 100)).mean(axis=(1, 2))
    p = np.clip(red / 0.1, 0, 1)
    return np.stack([1 - p, p], axis=1)


def red_block_image() -> np.ndarray:
    img = np.full((64, 96, 3), 235, np.uint8)
    img[16:40, 24:56] = RED  # 12.5 % of the image
    return img


def expl(values, geometry, method="m") -> Explanation:
    return Explanation(method, "toy", CLASSES, PROBS, 1, np.asarray(values, np.float32), geometry)


def check_ordering(good: FaithfulnessResult, *others: FaithfulnessResult) -> None:
    for other in others:
        assert good.deletion_auc < other.deletion_auc - 0.1
        assert good.insertion_auc > other.insertion_auc + 0.1


def test_auc_and_result_record():
    x = np.linspace(0, 1, 11)
    assert auc(x, np.ones(11)) == pytest.approx(1.0)
    assert auc(x, x) == pytest.approx(0.5)
    img = red_block_image()
    _, grid = extract_patches(img, 16)
    res = deletion_insertion(
        expl(np.ones(len(grid)), grid), red_fraction_model, img, steps=4, baseline="mean"
    )
    assert res.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1]
    # everything removed leaves the (not red) mean colour; everything revealed is the image
    assert res.deletion[0] == res.insertion[-1] == 1.0
    assert res.deletion[-1] == res.insertion[0] == 0.0
    d = res.to_dict()
    assert d["elements"] == "patches" and d["num_elements"] == len(grid) == 24
    assert len(d["deletion"]) == 5


def test_patches_pointing_at_the_red_region_are_most_faithful():
    img = red_block_image()
    patches, grid = extract_patches(img, 16)
    redness = red_fraction_model(patches)[:, 1]
    rng = np.random.default_rng(0)
    results = [
        deletion_insertion(expl(v, grid), red_fraction_model, img, baseline="mean", steps=12)
        for v in (redness, -redness, rng.random(len(grid)))
    ]
    check_ordering(*results)


def test_dense_map_elements_are_map_pixels():
    img = red_block_image()
    cam = np.zeros((8, 12), np.float32)
    cam[2:5, 3:7] = 1.0  # exactly the red block at 1/8 resolution
    cam += np.linspace(0, 0.1, cam.size).reshape(cam.shape)  # no ties
    good = deletion_insertion(
        expl(cam, DenseMap((64, 96))), red_fraction_model, img, baseline="mean"
    )
    bad = deletion_insertion(
        expl(-cam, DenseMap((64, 96))), red_fraction_model, img, baseline="mean"
    )
    assert good.elements == "pixels" and good.num_elements == 96
    check_ordering(good, bad)
    # deleting the 12.5 % red pixels first leaves no red after 3 of 20 steps
    assert good.deletion[3] == 0.0


def test_nuclei_are_removed_by_painting_their_discs_with_the_blurred_baseline():
    img = np.full((80, 80, 3), (236, 178, 205), np.uint8)
    centres = np.array([(r, c) for r in range(8, 80, 16) for c in range(8, 80, 16)], float)
    malignant = np.arange(len(centres)) % 3 == 0
    for (r, c), m in zip(centres, malignant):
        rr, cc = draw.disk((r, c), 4, shape=img.shape[:2])
        img[rr, cc] = RED if m else (92, 52, 135)
    geom = NucleiPoints(centres, (80, 80), radius=5.0)

    def model(images):  # saturates at 5 % red
        return np.clip(red_fraction_model(images) * 2, 0, 1)

    good = deletion_insertion(expl(malignant.astype(float), geom), model, img, steps=25)
    bad = deletion_insertion(expl(~malignant, geom), model, img, steps=25)
    assert good.elements == "nuclei" and good.num_elements == 25
    check_ordering(good, bad)


def test_explanations_at_another_level_are_scaled_to_the_image():
    geom = NucleiPoints(np.array([[20.0, 40.0]]), (40, 80), radius=2.0)  # level-0 shape
    rank, n, _ = element_rank_map(expl([1.0], geom), (20, 40))  # image at half size
    assert n == 1 and rank[10, 20] == 0 and rank[0, 0] == 1


def test_baselines():
    img = red_block_image()
    mean = baseline_image(img, "mean")
    assert mean.shape == img.shape and (mean == mean[0, 0]).all()
    blur = baseline_image(img, "blur")
    assert blur.dtype == np.uint8 and blur.shape == img.shape
    assert np.abs(np.diff(blur.astype(int), axis=1)).max() < 40  # no sharp edges left
    big = np.zeros((600, 600, 3), np.uint8)
    big[::2] = 255
    assert np.ptp(baseline_image(big, "blur")[100:500, 100:500]) <= 2  # stripes gone
    with pytest.raises(ValueError, match="baseline"):
        baseline_image(img, "zeros")


def test_perturbed_images_are_predicted_in_batches():
    img = red_block_image()
    _, grid = extract_patches(img, 16)
    sizes = []

    def model(images):
        sizes.append(len(images))
        return red_fraction_model(images)

    deletion_insertion(expl(np.arange(len(grid)), grid), model, img, steps=10, batch_size=8)
    assert sum(sizes) == 22 and max(sizes) == 8


def small_tissue() -> np.ndarray:
    img = np.full((56, 56, 3), (236, 178, 205), np.uint8)
    for r in (14, 42):
        for c in (14, 42):
            rr, cc = draw.disk((r, c), 6, shape=img.shape[:2])
            img[rr, cc] = (92, 52, 135)
    return img


@pytest.mark.parametrize("method,model", [("gradcam", "test_cnn"), ("amil", "amil")])
def test_predict_fn_matches_the_explainer(method, model):
    import torch

    from histoview.explain.run import explain_array
    from histoview.models.registry import create_model

    torch.manual_seed(0)
    net = create_model(model).eval()
    meta = {"classes": list(CLASSES)}
    img = small_tissue()
    explanation = explain_array(img, method, net, meta, None)
    predict = predictor_for(method, net, meta, batch_size=2)
    probs = predict(np.stack([img, img, img[::-1]]))
    assert probs.shape == (3, 2)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs[0], explanation.probabilities, atol=1e-5)
    assert np.allclose(probs[1], probs[0])


def test_predictor_for_graph_models_detects_nuclei_and_batches_graphs():
    from types import SimpleNamespace

    import torch

    class CountNuclei(torch.nn.Module):
        """A stand-in graph model: logit of class 1 = number of nodes of each graph."""

        model_config = SimpleNamespace(
            name="count", kind="graph", mean=None, std=None, input_size=None
        )

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, data):
            counts = torch.bincount(data.batch, minlength=data.num_graphs).float()
            return torch.stack([torch.zeros_like(counts), counts * self.scale], 1)

    img = small_tissue()
    empty = np.full_like(img, 236)
    predict = predictor_for("graph", CountNuclei(), {"classes": list(CLASSES)}, pixel_size_um=0.5)
    probs = predict(np.stack([img, empty]))
    n = np.log(probs[0, 1] / probs[0, 0])
    assert probs.shape == (2, 2) and n == pytest.approx(4, abs=1e-4)
    assert probs[1] == pytest.approx([0.5, 0.5])


# -- removal in the model's own input (model_predictor's predictors) --------------------------
class CountNuclei:
    """Factory of a stand-in graph model: logit of class 1 = number of nodes of each graph."""

    @staticmethod
    def make():
        from types import SimpleNamespace

        import torch

        class Net(torch.nn.Module):
            model_config = SimpleNamespace(
                name="count", kind="graph", mean=None, std=None, input_size=None
            )

            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(()))

            def forward(self, data):
                counts = torch.bincount(data.batch, minlength=data.num_graphs).float()
                return torch.stack([torch.zeros_like(counts), counts * self.scale], 1)

        return Net()


def test_graph_faithfulness_drops_nodes_in_one_batched_pass(monkeypatch):
    """Nuclei are removed from the graph itself: one detection, one forward pass for all
    steps of both curves, and exactly the probabilities of the smaller graphs."""
    import histoview.preprocessing.nuclei as nuclei_module

    img = small_tissue()
    predict = predictor_for(
        "graph", CountNuclei.make(), {"classes": list(CLASSES)}, pixel_size_um=0.5
    )
    graph, _ = predict.spec.graph(img, 0.5)
    assert len(graph) == 4
    geom = NucleiPoints(np.asarray(graph.centroids, float), img.shape[:2], radius=6.0)
    detections = []
    real_detect = nuclei_module.detect_nuclei
    monkeypatch.setattr(
        nuclei_module, "detect_nuclei", lambda *a, **k: detections.append(1) or real_detect(*a, **k)
    )
    res = deletion_insertion(expl([4.0, 3.0, 2.0, 1.0], geom), predict, img, steps=4)
    assert res.perturbation == "model input" and res.elements == "nuclei"
    # the graph made above (the explanation's) is the one whose nodes are dropped
    assert len(detections) == 0 and predict.forward_passes == 1
    sigmoid = 1 / (1 + np.exp(-np.arange(5.0)))  # p(class 1) of a graph of k nodes
    np.testing.assert_allclose(res.deletion, sigmoid[::-1], atol=1e-6)
    np.testing.assert_allclose(res.insertion, sigmoid, atol=1e-6)

    # the image definition paints and re-detects on every step: kept for comparison
    detections.clear()
    by_image = deletion_insertion(
        expl([4.0, 3.0, 2.0, 1.0], geom), predict, img, steps=4, space="image"
    )
    # every painted image but the first deletion step (the untouched image, the
    # explanation's: its graph is remembered)
    assert by_image.perturbation == "image" and len(detections) == 9
    assert by_image.deletion[0] == pytest.approx(res.deletion[0], abs=1e-6)


def test_graph_faithfulness_falls_back_to_the_image_for_other_nuclei():
    img = small_tissue()
    predict = predictor_for(
        "graph", CountNuclei.make(), {"classes": list(CLASSES)}, pixel_size_um=0.5
    )
    elsewhere = NucleiPoints(np.array([[5.0, 5.0], [50.0, 50.0]]), img.shape[:2], radius=6.0)
    res = deletion_insertion(expl([1.0, 0.0], elsewhere), predict, img, steps=2)
    assert res.perturbation == "image"


def test_bag_faithfulness_in_the_bag_is_the_image_definition():
    import torch

    from histoview.explain.run import explain_array
    from histoview.models.registry import create_model

    torch.manual_seed(0)
    net = create_model("amil").eval()
    img = np.concatenate([small_tissue(), small_tissue()[:, ::-1]], axis=1)  # 56 x 112
    explanation = explain_array(img, "amil", net, {"classes": list(CLASSES)}, None)
    assert len(explanation.geometry) == 8
    predict = predictor_for("amil", net, {"classes": list(CLASSES)})
    fast = deletion_insertion(explanation, predict, img, steps=4)
    assert fast.perturbation == "model input"
    assert predict.forward_passes == 2  # the two bags' embeddings, then every step's pooling
    slow = deletion_insertion(explanation, predict, img, steps=4, space="image")
    np.testing.assert_allclose(fast.deletion, slow.deletion, atol=1e-5)
    np.testing.assert_allclose(fast.insertion, slow.insertion, atol=1e-5)


def test_image_model_faithfulness_mixes_resized_inputs_in_one_pass():
    import torch

    from histoview.explain.run import explain_array
    from histoview.models.registry import create_model

    torch.manual_seed(0)
    net = create_model("test_cnn").eval()
    img = small_tissue()
    explanation = explain_array(img, "gradcam", net, {"classes": list(CLASSES)}, None)
    predict = predictor_for("gradcam", net, {"classes": list(CLASSES)})
    fast = deletion_insertion(explanation, predict, img, steps=5)
    assert fast.perturbation == "model input" and predict.forward_passes == 1
    slow = deletion_insertion(explanation, predict, img, steps=5, space="image")
    np.testing.assert_allclose(fast.deletion, slow.deletion, atol=0.02)
    np.testing.assert_allclose(fast.insertion, slow.insertion, atol=0.02)
    # the untouched and the emptied input are predicted once for both curves, and again
    # never: a second explanation of the same image reuses what this one computed
    before = predict.forward_passes
    deletion_insertion(explanation, predict, img, steps=5)
    assert predict.forward_passes == before


def test_unknown_space_is_refused():
    img = red_block_image()
    _, grid = extract_patches(img, 16)
    with pytest.raises(ValueError, match="space"):
        deletion_insertion(expl(np.ones(len(grid)), grid), red_fraction_model, img, space="x")


def test_graph_faithfulness_uses_the_pixel_size_the_explanation_was_made_at(monkeypatch):
    """An image without a pixel size is explained at an estimated one: the graph whose nodes
    faithfulness drops is detected at that pixel size, not at the predictor's default."""
    import histoview.preprocessing.nuclei as nuclei_module

    img = small_tissue()
    predict = predictor_for("graph", CountNuclei.make(), {"classes": list(CLASSES)})
    graph, _ = predict.spec.graph(img, 0.7)
    geom = NucleiPoints(np.asarray(graph.centroids, float), img.shape[:2], radius=6.0)
    forget_graphs()  # detected again below, to see at which pixel size
    explanation = Explanation(
        "graph",
        "count",
        CLASSES,
        PROBS,
        1,
        np.arange(len(graph), dtype=np.float32),
        geom,
        extra={"pixel_size_um": 0.7},
    )
    sizes = []
    real_detect = nuclei_module.detect_nuclei
    monkeypatch.setattr(
        nuclei_module,
        "detect_nuclei",
        lambda image, mpp, *a, **k: sizes.append(mpp) or real_detect(image, mpp, *a, **k),
    )
    res = deletion_insertion(explanation, predict, img, steps=2)
    assert res.perturbation == "model input" and sizes == [0.7]


def test_graph_faithfulness_reuses_the_nuclei_of_the_estimate_and_the_explanation(monkeypatch):
    """ "Run all" on an image without a pixel size: the estimate's nuclei make the
    explanation's graph and faithfulness's (no detection after the estimate), and the
    curves are those of a fresh detection."""
    pytest.importorskip("torch_geometric")
    import histoview.preprocessing.nuclei as nuclei_module
    from histoview.explain.run import explain_array, load_for_method
    from histoview.preprocessing import scale
    from histoview.preprocessing.phantom import make_phantom

    image = make_phantom("invasive", preset="breakhis", seed=17).image
    net, meta, sha = load_for_method("graph")
    scale.clear_cache()
    forget_graphs()
    detections = []
    real_detect = nuclei_module.detect_nuclei
    monkeypatch.setattr(
        nuclei_module, "detect_nuclei", lambda *a, **k: detections.append(1) or real_detect(*a, **k)
    )
    explanation = explain_array(image, "graph", net, meta, sha)
    est = scale.remembered_estimate(image)
    assert explanation.extra["pixel_size_source"] == "estimated"
    assert len(detections) == est.iterations  # the estimator's own runs
    reused = deletion_insertion(explanation, predictor_for("graph", net, meta), image, steps=5)
    assert reused.perturbation == "model input" and reused.elements == "nuclei"
    assert len(detections) == est.iterations, "faithfulness detected the nuclei again"
    # the same curves when everything is detected anew
    scale.clear_cache()
    forget_graphs()
    fresh_predict = predictor_for("graph", net, meta)
    fresh = deletion_insertion(explanation, fresh_predict, image, steps=5)
    assert len(detections) == est.iterations + 1 and fresh.perturbation == "model input"
    np.testing.assert_array_equal(fresh.deletion, reused.deletion)
    np.testing.assert_array_equal(fresh.insertion, reused.insertion)
