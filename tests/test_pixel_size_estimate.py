"""Pixel size estimated from the nuclei, the one pixel-size policy, and nothing empty as a result.

Images are the synthetic phantoms (which know their pixel size) or built here; the MoNuSeg
tests (``realdata``) read ../shared/data and skip when it is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoview.cli import main
from histoview.models.inputs import (
    DEFAULT_PIXEL_SIZE_UM,
    InputSpec,
    PixelSizeError,
    resolve_pixel_size,
)
from histoview.preprocessing.phantom import make_phantom
from histoview.preprocessing.scale import MIN_NUCLEI, estimate_pixel_size, is_blank

MONUSEG_UM = 0.2456


def _pink_noise(shape=(460, 700), seed=0) -> np.ndarray:
    """Eosin-pink stroma without nuclei, with texture (not flat, not glass)."""
    rng = np.random.default_rng(seed)
    base = np.array([225, 150, 190], np.float32)
    return np.clip(base + rng.normal(0, 12, (*shape, 3)), 0, 255).astype(np.uint8)


# -- the estimator --------------------------------------------------------------------------------
def test_benign_phantoms_at_three_pixel_sizes():
    estimates = {}
    for px in (0.35, 0.5, 0.7):
        est = estimate_pixel_size(make_phantom("benign", preset="breakhis", pixel_size_um=px).image)
        assert est.reliable and est.reason is None, est
        assert est.n_nuclei >= MIN_NUCLEI and 0 < est.relative_error < 0.3
        assert est.pixel_size_um == pytest.approx(px, rel=0.2), (px, est)
        estimates[px] = est.pixel_size_um
    # scale-covariant: twice the pixel size, twice the estimate
    assert estimates[0.7] / estimates[0.35] == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("label", ["in_situ", "invasive"])
def test_malignant_phantoms(label):
    # the phantom's tumour nuclei (9-16 um long) are larger than MoNuSeg's carcinoma nuclei the
    # estimator is calibrated on, so it reads the pixel size finer; still within 30 %
    est = estimate_pixel_size(make_phantom(label, preset="breakhis", seed=0).image)
    assert est.reliable and est.pixel_size_um == pytest.approx(0.5, rel=0.3), est


@pytest.mark.slow
def test_bach_sized_phantom_rescaled():
    from skimage.transform import rescale

    image = make_phantom("benign", preset="bach", seed=0).image
    est = estimate_pixel_size(image)
    assert est.reliable and est.pixel_size_um == pytest.approx(0.42, rel=0.2), est
    small = (rescale(image[:800, :1000], 0.8, channel_axis=-1) * 255).astype(np.uint8)
    est = estimate_pixel_size(small)
    assert est.reliable and est.pixel_size_um == pytest.approx(0.42 / 0.8, rel=0.2), est


def test_large_images_are_sampled_in_tissue_tiles():
    image = make_phantom("benign", preset="breakhis", pixel_size_um=0.5, seed=2).image
    big = np.tile(image, (3, 3, 1))  # 1380 x 2100
    est = estimate_pixel_size(big, max_pixels=1_100_000)  # one 1024 x 1024 tile
    assert est.reliable and est.pixel_size_um == pytest.approx(0.5, rel=0.2), est
    assert "tiles" not in (est.reason or "")


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.full((300, 300, 3), 245, np.uint8), "flat colour"),
        (np.zeros((300, 300, 3), np.uint8), "flat colour"),
        (
            np.clip(np.random.default_rng(0).normal(240, 6, (300, 300, 1)), 0, 255)
            .astype(np.uint8)
            .repeat(3, axis=2),
            "glass",
        ),
        (make_phantom("invasive", preset="breakhis", seed=1).image[:50, :50], "nuclei"),
        (_pink_noise(), "nuclei"),
    ],
    ids=["white", "black", "glass", "50x50-patch", "no-nuclei"],
)
def test_unreliable_estimates_say_why(image, words):
    est = estimate_pixel_size(image)
    assert not est.reliable and words in est.reason, est
    with pytest.raises(PixelSizeError, match="--pixel-size") as err:
        resolve_pixel_size(None, image=image)
    assert words in str(err.value)


def test_is_blank():
    assert is_blank(np.full((64, 64, 3), 250, np.uint8))
    assert is_blank(make_phantom("benign", seed=0).image) is None
    assert is_blank(_pink_noise()) is None


# -- the policy -----------------------------------------------------------------------------------
def test_one_policy_for_the_pixel_size():
    image = make_phantom("benign", preset="breakhis", seed=0).image
    assert resolve_pixel_size(0.25, image=image)[:2] == (0.25, "file")
    assert resolve_pixel_size(0.3, source="user", image=image)[:2] == (0.3, "user")
    choice = resolve_pixel_size(None, image=image)
    assert choice.source == "estimated" and choice.estimate.reliable
    assert choice.pixel_size_um == pytest.approx(0.5, rel=0.2)
    assert "estimated from the nuclei" in choice.describe()
    # no image at hand (a training cache key): the model's training pixel size, else the default
    assert resolve_pixel_size(None, model_pixel_size_um=0.42)[:2] == (0.42, "checkpoint-default")
    assert resolve_pixel_size(None)[:2] == (DEFAULT_PIXEL_SIZE_UM, "default")
    spec = InputSpec(kind="graph", mean=None, std=None, pixel_size_um=0.42)
    assert spec.pixel_size(None) == (0.42, "checkpoint-default")
    assert spec.pixel_size(0.25, source="user") == (0.25, "user")
    assert spec.pixel_size(None, image=image)[1] == "estimated"


# -- through the command line ---------------------------------------------------------------------
def _explain(path, out, *extra, method="graph"):
    return main(["explain", str(path), "--method", method, "--out", str(out), *extra])


def test_explain_estimates_the_pixel_size_of_a_72_dpi_tiff(tmp_path, capsys):
    path = tmp_path / "screen.tif"
    image = make_phantom("benign", preset="breakhis", pixel_size_um=0.5, seed=0).image
    tifffile.imwrite(path, image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert _explain(path, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "graph: pixel size" in out and "estimated from the nuclei's size" in out
    record = json.loads((tmp_path / "out" / "screen.graph.json").read_text())
    assert record["pixel_size_source"] == "estimated"
    assert record["pixel_size_um"] == pytest.approx(0.5, rel=0.2)
    assert record["pixel_size_estimate"]["reliable"] is True
    # the user's value wins and is recorded as theirs
    assert _explain(path, tmp_path / "out2", "--pixel-size", "0.5") == 0
    assert "pixel size 0.5 um/px (given with --pixel-size)" in capsys.readouterr().out
    record = json.loads((tmp_path / "out2" / "screen.graph.json").read_text())
    assert (record["pixel_size_um"], record["pixel_size_source"]) == (0.5, "user")


def test_every_method_records_the_pixel_size(tmp_path, capsys):
    path = tmp_path / "calibrated.tif"
    image = make_phantom("invasive", preset="breakhis", seed=0).image
    tifffile.imwrite(
        path, image, photometric="rgb", resolution=(20_000, 20_000), resolutionunit="CENTIMETER"
    )
    assert _explain(path, tmp_path / "out", method="gradcam") == 0
    assert "gradcam: pixel size 0.5 um/px (from the file's calibration)" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "calibrated.gradcam.json").read_text())
    assert (record["pixel_size_um"], record["pixel_size_source"]) == (0.5, "file")


def test_unreliable_estimate_asks_for_the_pixel_size(tmp_path, capsys):
    path = tmp_path / "patch.png"
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=1).image[:50, :50]).save(path)
    assert _explain(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cannot be estimated reliably" in err and "--pixel-size" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# -- nothing empty is a result --------------------------------------------------------------------
def test_blank_image_is_an_error_for_every_method(tmp_path, capsys):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 245, np.uint8)).save(path)
    for method in ("graph", "amil", "gradcam"):
        assert _explain(path, tmp_path / "out", "--pixel-size", "0.5", method=method) == 2
        assert "no tissue" in capsys.readouterr().err


def test_graph_without_nuclei_is_an_error_naming_the_pixel_size(tmp_path, capsys):
    path = tmp_path / "stroma.png"
    Image.fromarray(_pink_noise()).save(path)
    assert _explain(path, tmp_path / "out", "--pixel-size", "0.5") == 2
    err = capsys.readouterr().err
    assert "no nuclei found at 0.5 um/px (given by the user)" in err and "pixel size" in err


def test_graph_with_few_nuclei_warns_visibly(tmp_path, capsys):
    from skimage.draw import disk

    image = _pink_noise()
    for k in range(4):
        rr, cc = disk((100 + 80 * (k % 2), 150 + 120 * k), 6, shape=image.shape[:2])
        image[rr, cc] = (70, 40, 120)  # dark haematoxylin nuclei, 6 um across at 0.5 um/px
    path = tmp_path / "sparse.png"
    Image.fromarray(image).save(path)
    assert _explain(path, tmp_path / "out", "--pixel-size", "0.5") == 0
    out = capsys.readouterr().out
    assert "graph: warning: only" in out and "nuclei found" in out
    record = json.loads((tmp_path / "out" / "sparse.graph.json").read_text())
    assert any("nuclei found" in w for w in record["warnings"])


def test_a_bag_without_tissue_patches_is_an_error():
    from histoview.explain.amil import _tissue_warnings

    spec = InputSpec(kind="bag", mean=None, std=None, patch_size=28, stride=28, max_background=0.5)
    image = np.full((280, 280, 3), 245, np.uint8)
    image[:, ::28] = image[:, 1::28] = (120, 60, 140)  # a thin stripe in every patch: 93 % glass
    _, grid = spec.bag(image)
    assert len(grid) == 1  # extract_patches keeps one patch when all are glass
    with pytest.raises(ValueError, match="no tissue patches"):
        _tissue_warnings(image, grid, spec)
    image[:28, :56] = (120, 60, 140)  # two tissue patches of 100
    _, grid = spec.bag(image)
    assert any("2 of 100 patches" in w for w in _tissue_warnings(image, grid, spec))


# -- real data ------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_monuseg_tiles_estimated_within_20_percent(monuseg_dir):
    errors = []
    for path in sorted((monuseg_dir / "images").glob("*.tif")):
        est = estimate_pixel_size(tifffile.imread(path)[..., :3])
        assert est.reliable, (path.name, est)
        errors.append(est.pixel_size_um / MONUSEG_UM - 1)
    assert errors, "no MoNuSeg tiles found"
    assert max(abs(e) for e in errors) < 0.2 and np.mean(np.abs(errors)) < 0.1, errors


@pytest.mark.realdata
@pytest.mark.slow
def test_monuseg_tile_as_distributed_explained_at_the_right_scale(monuseg_dir, tmp_path, capsys):
    """A MoNuSeg tile with its 72 dpi tags: the graph finds the annotated nuclei (F1 >= 0.8)."""
    from _monuseg import match_detections, polygons_to_labels, read_aperio_xml

    name = "TCGA-AR-A1AS-01Z-00-DX1"
    xml = monuseg_dir / "annotations" / f"{name}.xml"
    if not xml.exists():
        pytest.skip(f"{xml} is absent")
    image = tifffile.imread(monuseg_dir / "images" / f"{name}.tif")[..., :3]
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert _explain(path, tmp_path / "out") == 0
    assert "estimated from the nuclei's size" in capsys.readouterr().out
    collection = json.loads((tmp_path / "out" / f"{name}.graph.geojson").read_text())
    centroids = np.array(
        [
            f["geometry"]["coordinates"][::-1]
            for f in collection["features"]
            if f["properties"].get("kind") == "nucleus"
        ]
    )
    truth = polygons_to_labels(read_aperio_xml(xml), image.shape[:2])
    assert match_detections(centroids, truth)["f1"] >= 0.8
