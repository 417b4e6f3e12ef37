"""Nuclei detection and features (histoview.preprocessing.nuclei), scored with the MoNuSeg
helpers of benchmarks/_monuseg.py (detection matching, Dice, annotation XML)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _monuseg import dice, match_detections, polygons_to_labels, read_aperio_xml  # benchmarks/
from skimage import draw, transform

from histoview.preprocessing.nuclei import (
    FEATURE_NAMES,
    Nuclei,
    NucleiDetectorConfig,
    detect_nuclei,
    nucleus_features,
)

PX = 0.25  # um per pixel of the synthetic tissue
PINK = (236, 178, 205)
PURPLE = (92, 52, 135)


def synthetic_tissue(seed: int = 0, n_side: int = 6, spacing_px: int = 60):
    """Pink background with ~n_side^2 purple ellipses (nuclei of 2.5-3.5 um radius).

    Returns the RGB image, the true instance labels and the true centres (row, col).
    """
    rng = np.random.default_rng(seed)
    size = n_side * spacing_px
    img = np.empty((size, size, 3), np.float64)
    img[:] = PINK
    labels = np.zeros((size, size), np.int32)
    centres = []
    for i in range(n_side):
        for j in range(n_side):
            r = spacing_px * (i + 0.5) + rng.uniform(-8, 8)
            c = spacing_px * (j + 0.5) + rng.uniform(-8, 8)
            a, b = rng.uniform(2.5, 3.5, size=2) / PX
            rr, cc = draw.ellipse(r, c, a, b, shape=labels.shape, rotation=rng.uniform(0, np.pi))
            img[rr, cc] = PURPLE
            labels[rr, cc] = len(centres) + 1
            centres.append((r, c))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels, np.array(centres)


@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue()


@pytest.fixture(scope="module")
def detected(tissue) -> Nuclei:
    return detect_nuclei(tissue[0], PX)


def test_synthetic_discs_are_all_found(tissue, detected):
    _, labels, centres = tissue
    res = match_detections(detected.centroids, labels)
    assert res["n_true"] == len(centres) == 36
    assert res["f1"] >= 0.97, res
    # one-to-one in the other mode too: centroids within 1 um of the true centres
    res_c = match_detections(detected.centroids, centres, radius_px=1.0 / PX)
    assert res_c["f1"] >= 0.97, res_c


def test_nuclei_container(tissue, detected):
    n = len(detected)
    assert detected.labels.shape == tissue[0].shape[:2]
    assert detected.labels.dtype == np.int32
    assert detected.labels.max() == n and set(np.unique(detected.labels)) == set(range(n + 1))
    assert detected.centroids.shape == (n, 2) and detected.centroids.dtype == np.float64
    assert len(detected.outlines) == n
    assert detected.pixel_size_um == PX
    for i, poly in enumerate(detected.outlines):
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 4
        assert not np.allclose(poly[0], poly[-1])  # closed polygon, first point not repeated
        r, c = np.round(poly.mean(axis=0)).astype(int)
        assert detected.labels[r, c] == i + 1


def test_features_shapes_names_and_values(tissue, detected):
    n = len(detected)
    assert detected.feature_names == FEATURE_NAMES
    assert detected.features.shape == (n, len(FEATURE_NAMES))
    assert detected.features.dtype == np.float32
    assert np.isfinite(detected.features).all()
    f = dict(zip(FEATURE_NAMES, detected.features.T))
    # ellipses of 2.5-3.5 um semi-axes: area pi*a*b in [19.6, 38.5] um^2
    assert np.all((f["area_um2"] > 15) & (f["area_um2"] < 45))
    assert np.all((f["solidity"] > 0.85) & (f["solidity"] <= 1.0))
    assert np.all((f["eccentricity"] >= 0) & (f["eccentricity"] < 1))
    assert np.all(f["major_axis_um"] >= f["minor_axis_um"])
    assert np.all((f["circularity"] > 0.6) & (f["circularity"] <= 1.0))
    assert np.all(np.abs(f["orientation"]) <= np.pi / 2 + 1e-6)
    assert np.all(f["mean_hematoxylin"] > 0)
    assert np.all((f["glcm_homogeneity"] > 0) & (f["glcm_homogeneity"] <= 1))


def test_nucleus_features_of_given_labels(tissue):
    img, labels, _ = tissue
    sparse = np.where(np.isin(labels, [3, 17]), labels * 10, 0)  # non-sequential labels
    feats, names = nucleus_features(img, sparse, PX)
    assert names == FEATURE_NAMES
    assert feats.shape == (2, len(FEATURE_NAMES))
    area_true = np.array([(labels == 3).sum(), (labels == 17).sum()]) * PX**2
    np.testing.assert_allclose(feats[:, 0], area_true, rtol=1e-5)
    empty, _ = nucleus_features(img, np.zeros_like(labels), PX)
    assert empty.shape == (0, len(FEATURE_NAMES))


def test_micrometre_scaling_finds_the_same_nuclei(tissue, detected):
    img, labels, _ = tissue
    half = (transform.rescale(img, 0.5, channel_axis=-1, anti_aliasing=True) * 255).round()
    coarse = detect_nuclei(half.astype(np.uint8), 2 * PX)
    assert len(coarse) == len(detected) == labels.max()
    res = match_detections((coarse.centroids + 0.5) * 2 - 0.5, labels)
    assert res["f1"] >= 0.97
    fine_area = detected.features[:, 0].sum()
    np.testing.assert_allclose(coarse.features[:, 0].sum(), fine_area, rtol=0.1)


def test_input_handling(tissue):
    img = tissue[0]
    with pytest.raises(ValueError, match="RGB"):
        detect_nuclei(img.mean(axis=2).astype(np.uint8), PX)
    with pytest.raises(ValueError):
        detect_nuclei(img[..., :1], PX)
    with pytest.raises(ValueError, match="pixel_size"):
        detect_nuclei(img, 0.0)
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert len(detect_nuclei(rgba, PX)) == 36
    assert len(detect_nuclei(img.astype(np.float32) / 255, PX)) == 36


def test_blank_tissue_has_no_nuclei():
    pink = np.zeros((200, 200, 3), np.uint8)
    pink[:] = PINK
    nuclei = detect_nuclei(pink, PX)
    assert len(nuclei) == 0
    assert nuclei.features.shape == (0, len(FEATURE_NAMES))
    assert nuclei.centroids.shape == (0, 2)
    noisy = np.clip(pink + np.random.default_rng(1).normal(0, 3, pink.shape), 0, 255)
    assert len(detect_nuclei(noisy.astype(np.uint8), PX)) == 0


def test_background_correction_handles_uneven_staining(tissue):
    img, labels, _ = tissue
    # darker, bluer towards the right (thick section / vignetting): the background on the
    # right is about as haematoxylin-dense as the nuclei on the left
    ramp = np.linspace(0, 1, img.shape[1])[None, :, None]
    hazy = (img * (1 - ramp * (1 - np.array([0.4, 0.4, 0.6])))).clip(0, 255).astype(np.uint8)
    res = match_detections(detect_nuclei(hazy, PX).centroids, labels)
    assert res["f1"] >= 0.97, res
    flat = NucleiDetectorConfig(background_radius_um=0.0)  # global Otsu alone
    assert match_detections(detect_nuclei(hazy, PX, flat).centroids, labels)["f1"] < 0.9


def test_config_sizes_are_respected(tissue):
    strict = NucleiDetectorConfig(min_area_um2=60.0)  # every synthetic nucleus is smaller
    assert len(detect_nuclei(tissue[0], PX, strict)) == 0


def test_match_detections_on_labels():
    truth = np.zeros((20, 20), np.int32)
    truth[2:6, 2:6] = 1
    truth[10:15, 10:15] = 7
    pred = [(3, 3), (11, 11), (13, 13), (18, 1)]  # one hit, two in nucleus 7, one in nothing
    res = match_detections(np.array(pred, float), truth)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 2, 0)
    assert res["precision"] == 0.5 and res["recall"] == 1.0
    assert res["f1"] == pytest.approx(2 / 3)
    res = match_detections(np.array([[3.4, 2.6], [-5.0, 3.0], [30.0, 30.0]]), truth)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 2, 1)
    assert match_detections(np.zeros((0, 2)), truth)["recall"] == 0.0
    assert match_detections(np.zeros((0, 2)), np.zeros((5, 5), int))["f1"] == 1.0


def test_match_detections_on_centroids_is_one_to_one_and_maximal():
    true_c = np.array([[0.0, 0.0], [4.0, 0.0]])
    # p0 is within 3 px of both true points, p1 only of the first: a greedy nearest match
    # (p0 -> first) would leave p1 unmatched; the maximum matching pairs both.
    pred = np.array([[2.1, 0.0], [-2.0, 0.0]])
    res = match_detections(pred, true_c, radius_px=3.0)
    assert res["tp"] == 2 and res["fp"] == 0 and res["fn"] == 0
    res = match_detections(
        np.array([[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0]]), np.array([[0.0, 0.0]]), radius_px=3.0
    )
    assert (res["tp"], res["fp"], res["fn"]) == (1, 2, 0)
    res = match_detections(np.zeros((0, 2)), true_c, radius_px=3.0)
    assert (res["tp"], res["fn"], res["f1"]) == (0, 2, 0.0)
    with pytest.raises(ValueError):
        match_detections(pred, true_c)  # float centroids need a radius


def test_dice():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert dice(a, b) == 1.0
    a[:5] = True
    assert dice(a, b) == 0.0
    b[:, :5] = True  # |a & b| = 25, |a| = |b| = 50
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a.astype(np.uint8) * 3) == 1.0
    with pytest.raises(ValueError):
        dice(a, b[:5])


def test_read_aperio_xml_and_rasterise(tmp_path: Path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        '<Annotations MicronsPerPixel="0.2456"><Annotation Id="1"><Regions>'
        '<Region Id="1"><Vertices><Vertex X="2" Y="1"/><Vertex X="8" Y="1"/>'
        '<Vertex X="8" Y="5"/><Vertex X="2" Y="5"/></Vertices></Region>'
        '<Region Id="2"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/></Vertices></Region>'
        "</Regions></Annotation></Annotations>"
    )
    polys = read_aperio_xml(xml)
    assert len(polys) == 1  # the degenerate 2-vertex region is skipped
    np.testing.assert_array_equal(polys[0][0], [1.0, 2.0])  # (row, col) = (Y, X)
    labels = polygons_to_labels(polys, (10, 12))
    assert labels.dtype == np.int32 and labels[3, 5] == 1 and labels[8, 5] == 0


@pytest.mark.realdata
def test_monuseg_detection_f1(monuseg_dir: Path):
    import tifffile

    f1s = []
    for xml in sorted((monuseg_dir / "annotations").glob("*.xml")):
        image = tifffile.imread(monuseg_dir / "images" / f"{xml.stem}.tif")
        truth = polygons_to_labels(read_aperio_xml(xml), image.shape[:2])
        nuclei = detect_nuclei(image, 0.2456)
        f1s.append(match_detections(nuclei.centroids, truth)["f1"])
    assert f1s, "no MoNuSeg annotations found"
    assert np.mean(f1s) >= 0.75, f1s
