"""Agreement between explanation methods (histoview.explain.agreement)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoview.explain.agreement import (
    agreement_table,
    common_maps,
    default_shape,
    method_labels,
    normalise,
    spearman,
    top_fraction_mask,
    topk_overlap,
)
from histoview.explain.base import DenseMap, Explanation, NucleiPoints
from histoview.preprocessing.patches import extract_patches

CLASSES = ("benign", "malignant")
PROBS = np.array([0.2, 0.8])


def blob(shape=(12, 16), centre=(4.0, 5.0), width=3.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-(((yy - centre[0]) / width) ** 2 + ((xx - centre[1]) / width) ** 2)).astype(
        np.float32
    )


def dense(values, method="gradcam", model="test_cnn", image_shape=(96, 128)) -> Explanation:
    return Explanation(
        method, model, CLASSES, PROBS, 1, np.asarray(values, np.float32), DenseMap(image_shape)
    )


def test_default_shape_caps_the_longer_side():
    assert default_shape((2048, 1536)) == (256, 192)
    assert default_shape((100, 50)) == (100, 50)
    assert max(default_shape((460, 700), 128)) == 128


def test_normalise():
    out = normalise(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert np.allclose(out, [[0, 0.25], [0.5, 1]])
    assert not normalise(np.full((3, 3), 7.0)).any()


def test_identical_maps_agree_fully_and_inverted_maps_disagree():
    a = blob()
    assert spearman(a, a) == pytest.approx(1.0)
    assert topk_overlap(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a.max() - a) < 0
    assert topk_overlap(a, a.max() - a) == 0.0
    # rank correlation ignores monotone transforms
    assert spearman(a, np.sqrt(a)) == pytest.approx(1.0)


def test_spearman_handles_ties_and_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(10, 10)).astype(float)
    b = a + rng.integers(0, 3, size=(10, 10))
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert np.isnan(spearman(np.zeros((4, 4)), a[:4, :4]))


def test_top_fraction_excludes_ties_at_the_floor():
    m = np.zeros((10, 10))
    m[0, :5] = 1.0  # 5 % of the pixels carry all the importance
    mask = top_fraction_mask(m, 0.1)
    assert mask.sum() == 5
    assert not top_fraction_mask(np.ones((4, 4)), 0.1).any()
    assert np.isnan(topk_overlap(np.ones((4, 4)), np.zeros((4, 4))))


def test_common_maps_put_all_methods_on_one_grid():
    img = np.zeros((96, 128, 3), np.uint8)
    _, grid = extract_patches(img, 16)
    patches = Explanation(
        "amil", "amil", CLASSES, PROBS, 1, np.arange(len(grid), dtype=np.float32), grid
    )
    nuclei = Explanation(
        "graph",
        "test_rsf",
        CLASSES,
        PROBS,
        1,
        np.array([1.0, 0.5], np.float32),
        NucleiPoints(np.array([[20.0, 20.0], [60.0, 100.0]]), (96, 128), radius=5),
    )
    # a lower pyramid level of the same image: same aspect ratio, other size
    cam = dense(blob(), image_shape=(48, 64))
    maps = common_maps([patches, nuclei, cam], shape=(24, 32))
    assert list(maps) == ["amil", "graph", "gradcam"]
    assert all(m.shape == (24, 32) and m.dtype == np.float32 for m in maps.values())
    assert maps["graph"][5, 5] == pytest.approx(1.0) and maps["graph"][0, 31] == 0
    assert common_maps({"a": cam})["a"].shape == (48, 64)
    with pytest.raises(ValueError, match="not the same image"):
        common_maps([cam, dense(blob(), image_shape=(128, 64))])


def test_method_labels_disambiguate_repeated_methods():
    a, b = dense(blob(), model="resnet18"), dense(blob(), model="vgg16")
    assert method_labels([a, b]) == ["gradcam (resnet18)", "gradcam (vgg16)"]
    assert method_labels([a, a]) == ["gradcam (resnet18) #1", "gradcam (resnet18) #2"]


def test_agreement_table_is_symmetric_and_serialisable():
    a = blob()
    expls = {
        "same": dense(a),
        "copy": dense(a * 3),
        "inverted": dense(a.max() - a),
        "flat": dense(np.zeros_like(a)),
    }
    table = agreement_table(expls)
    json.dumps(table, allow_nan=False)
    assert table["methods"] == ["same", "copy", "inverted", "flat"]
    for key in ("spearman", "topk_iou"):
        m = np.array(table[key], dtype=float)  # None -> nan
        assert m.shape == (4, 4)
        assert np.allclose(m, m.T, equal_nan=True)
    rho = np.array(table["spearman"], dtype=float)
    assert rho[0, 1] == pytest.approx(1.0) and rho[0, 2] < 0
    assert table["spearman"][0][3] is None and table["topk_iou"][3][3] is None
    assert table["topk_iou"][0][1] == pytest.approx(1.0)


def test_maps_of_different_classes_are_said_to_be_so():
    """Run all on a malignant image: the nuclei graph's demo weights explained "benign" and
    the others "malignant"; their agreement was listed like any other pair."""
    import dataclasses

    from histoview.explain.agreement import class_mismatch

    a = blob()
    same = {"amil": dense(a), "gradcam": dense(a * 2)}
    assert agreement_table(same)["explains"] == ["malignant", "malignant"]
    assert class_mismatch(agreement_table(same)) is None
    other = {**same, "graph": dataclasses.replace(dense(a), target_class=0)}
    table = agreement_table(other)
    assert table["explains"] == ["malignant", "malignant", "benign"]
    assert class_mismatch(table) == "amil, gradcam: malignant; graph: benign"
