"""``histoview explain --method all`` and ``histoview export``: every method, a comparison, annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _geojson import read_geojson_nuclei, validate_geojson
from histoview.cli import main
from histoview.explain.methods import get_method, list_methods
from histoview.models.library import bundled_weights_dir
from histoview.preprocessing.phantom import make_phantom


def _available_methods():
    return [
        m
        for m in list_methods(run_all=True)
        if (bundled_weights_dir() / f"{get_method(m).demo_weights}.safetensors").exists()
    ]


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory):
    ph = make_phantom("in_situ", preset="breakhis", seed=8_400_001)
    path = tmp_path_factory.mktemp("img") / "duct.png"
    Image.fromarray(ph.image).save(path)
    return path


@pytest.mark.slow
def test_explain_all_writes_every_method_and_a_comparison(phantom_png, tmp_path):
    from pypdf import PdfReader

    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(phantom_png),
                "--method",
                "all",
                "--out",
                str(out),
                "--pixel-size",
                "0.5",
            ]
        )
        == 0
    )
    methods = _available_methods()
    assert len(methods) >= 2
    for m in methods:
        record = json.loads((out / f"duct.{m}.json").read_text())
        assert record["method"] == m and (out / f"duct.{m}.tif").exists()
    png = np.asarray(Image.open(out / "duct.compare.png").convert("RGB"))
    assert png.shape[1] > 800 and png.std() > 10
    text = " ".join(page.extract_text() for page in PdfReader(out / "duct.report.pdf").pages)
    assert len(PdfReader(out / "duct.report.pdf").pages) == 1
    low = text.lower()
    assert "research use only, not for diagnosis" in low and "duct.png" in text and "µm" in text
    assert "synthetic" in low


def test_export_geojson_and_csv(phantom_png, tmp_path):
    assert main(["export", str(phantom_png), "--method", "amil", "--out", str(tmp_path)]) == 0
    gj = json.loads((tmp_path / "duct.amil.geojson").read_text())
    assert validate_geojson(gj) == []
    assert len(gj["features"]) == 400 and all("weight" in f["properties"] for f in gj["features"])
    assert (
        (tmp_path / "duct.amil.csv")
        .read_text()
        .splitlines()[0]
        .startswith("id,x,y,width,height,weight")
    )
    # never overwrite: a second export gets a new name
    assert (
        main(
            [
                "export",
                str(phantom_png),
                "--method",
                "amil",
                "--format",
                "csv",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "duct-1.amil.csv").exists()


@pytest.mark.skipif("graph" not in _available_methods(), reason="no bundled graph demo weights")
def test_graph_explain_geojson_reimports_the_same_nuclei(phantom_png, tmp_path):
    assert (
        main(
            [
                "explain",
                str(phantom_png),
                "--method",
                "graph",
                "--importance",
                "occlusion",
                "--pixel-size",
                "0.5",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    path = tmp_path / "duct.graph.geojson"
    gj = json.loads(path.read_text())
    assert validate_geojson(gj) == []
    kinds = {f["geometry"]["type"] for f in gj["features"]}
    assert {"Point", "LineString", "Polygon"} <= kinds
    points = [f for f in gj["features"] if f["geometry"]["type"] == "Point"]
    assert all(
        {"importance", "area_um2", "eccentricity"} <= set(f["properties"]["measurements"])
        for f in points
    )
    centroids, importance, _ = read_geojson_nuclei(path)
    assert len(centroids) == len(points) > 50
    xy = np.array([f["geometry"]["coordinates"] for f in points])
    np.testing.assert_allclose(centroids[:, ::-1], xy)
    np.testing.assert_allclose(importance, [f["properties"]["importance"] for f in points])
    record = json.loads((tmp_path / "duct.graph.json").read_text())
    assert record["model"].startswith("rsf") and record["checkpoint_sha256"]
