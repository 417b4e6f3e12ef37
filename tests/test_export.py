"""GeoJSON / CSV export (histoview.explain.export), and the tests' GeoJSON checks (_geojson.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from _geojson import read_geojson_nuclei, validate_geojson
from histoview.explain.base import DenseMap, Explanation, NucleiPoints, write_explanation
from histoview.explain.export import dense_regions, export_csv, export_geojson, region_threshold
from histoview.preprocessing.patches import extract_patches

CLASSES = ("benign", "malignant")
PROBS = np.array([0.3, 0.7])


def nuclei_explanation() -> Explanation:
    rng = np.random.default_rng(3)
    cents = rng.uniform([5, 5], [95, 145], size=(12, 2))
    outlines = tuple(
        np.array([[r - 3, c - 3], [r - 3, c + 3], [r + 3, c + 3], [r + 3, c - 3]]) for r, c in cents
    )
    edges = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    geom = NucleiPoints(
        cents,
        (100, 150),
        np.concatenate([edges, edges[::-1]], 1),
        np.full(8, 0.5, np.float32),
        outlines,
        {"area_um2": rng.uniform(20, 60, 12), "eccentricity": rng.uniform(0, 1, 12)},
    )
    return Explanation(
        "graph",
        "rsf",
        CLASSES,
        PROBS,
        1,
        rng.random(12).astype(np.float32),
        geom,
        checkpoint_sha256="ab" * 32,
    )


def patch_explanation() -> Explanation:
    _, grid = extract_patches(np.zeros((64, 96, 3), np.uint8), 32)
    return Explanation(
        "amil", "amil", CLASSES, PROBS, 1, np.linspace(0, 1, len(grid), dtype=np.float32), grid
    )


def blob_explanation(threshold=None) -> Explanation:
    yy, xx = np.mgrid[0:20, 0:30]
    cam = np.exp(-(((yy - 6) / 3) ** 2 + ((xx - 8) / 3) ** 2))  # two blobs
    cam += 0.8 * np.exp(-(((yy - 13) / 2.5) ** 2 + ((xx - 22) / 2.5) ** 2))
    return Explanation(
        "dt-gradcam",
        "test_cnn",
        CLASSES,
        PROBS,
        1,
        cam.astype(np.float32),
        DenseMap((200, 300)),
        threshold=threshold,
    )


def test_nuclei_geojson_validates_and_reimports(tmp_path):
    expl = nuclei_explanation()
    path = export_geojson(expl, tmp_path / "n.geojson")
    obj = json.loads(path.read_text())
    assert validate_geojson(obj) == [] and validate_geojson(path) == []
    assert obj["properties"]["notice"].lower().startswith("research use only")
    kinds = [f["properties"]["kind"] for f in obj["features"]]
    assert (
        kinds.count("nucleus") == 12
        and kinds.count("nucleus_outline") == 12
        and kinds.count("edge") == 4
    )
    cents, imp, props = read_geojson_nuclei(path)
    assert np.allclose(cents, expl.geometry.centroids)
    assert np.allclose(imp, expl.values, atol=1e-6)
    assert np.allclose([p["area_um2"] for p in props], expl.geometry.features["area_um2"])


def test_qupath_style_polygon_detections_are_read_at_their_centroid(tmp_path):
    square = [[10.0, 20.0], [14.0, 20.0], [14.0, 26.0], [10.0, 26.0], [10.0, 20.0]]
    obj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square]},
                "properties": {
                    "objectType": "detection",
                    "measurements": [{"name": "importance", "value": 0.25}],
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square]},
                "properties": {"objectType": "annotation"},
            },
        ],
    }
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps(obj))
    cents, imp, _ = read_geojson_nuclei(path)
    assert np.allclose(cents, [[23.0, 12.0]]) and np.allclose(imp, [0.25])


def test_patch_polygons_carry_their_weights(tmp_path):
    expl = patch_explanation()
    obj = json.loads(export_geojson(expl, tmp_path / "p.geojson").read_text())
    assert validate_geojson(obj) == []
    assert len(obj["features"]) == 6
    weights = [f["properties"]["measurements"]["weight"] for f in obj["features"]]
    assert np.allclose(weights, expl.values)
    xs = [x for x, _ in obj["features"][5]["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs)) == (64, 96)


def test_dense_map_blobs_become_region_polygons(tmp_path):
    expl = blob_explanation()
    regions = dense_regions(expl, 0.5)
    assert len(regions) == 2
    big, small = sorted(regions, key=lambda r: -r.area_px)
    assert big.centroid == pytest.approx((65, 85), abs=6)  # map pixel (6, 8) is level-0 (65, 85)
    assert small.centroid == pytest.approx((135, 225), abs=6)
    assert big.mean_importance > 0.5 and big.max_importance == pytest.approx(1, abs=0.05)
    obj = json.loads(export_geojson(expl, tmp_path / "d.geojson", threshold=0.5).read_text())
    assert validate_geojson(obj) == []
    assert len(obj["features"]) == 2
    for f in obj["features"]:
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"]["objectType"] == "annotation"
        assert "mean_importance" in f["properties"]["measurements"]
        ring = np.array(f["geometry"]["coordinates"][0])
        assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= 300 and ring[:, 1].max() <= 200
    # polygon area agrees with the pixel count
    ring = np.array(obj["features"][0]["geometry"]["coordinates"][0])
    shoelace = 0.5 * abs(np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]))
    assert shoelace == pytest.approx(obj["features"][0]["properties"]["area_px"], rel=0.1)


def test_region_threshold_defaults():
    assert region_threshold(blob_explanation(threshold=0.42)) == 0.42
    otsu = region_threshold(blob_explanation())
    assert 0.05 < otsu < 0.8
    assert len(dense_regions(blob_explanation())) == 2


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_columns(tmp_path):
    rows = read_csv(export_csv(nuclei_explanation(), tmp_path / "n.csv"))
    assert list(rows[0]) == ["id", "x", "y", "importance", "area_um2", "eccentricity"]
    assert len(rows) == 12
    rows = read_csv(export_csv(patch_explanation(), tmp_path / "p.csv"))
    assert list(rows[0]) == ["id", "x", "y", "width", "height", "weight"]
    assert rows[5]["x"] == "64" and rows[5]["width"] == "32" and float(rows[5]["weight"]) == 1
    rows = read_csv(export_csv(blob_explanation(), tmp_path / "d.csv", threshold=0.5))
    assert list(rows[0]) == [
        "id",
        "area_px",
        "mean_importance",
        "max_importance",
        "centroid_x",
        "centroid_y",
    ]
    assert len(rows) == 2


def test_existing_files_are_never_overwritten(tmp_path):
    for export, name in ((export_geojson, "a.geojson"), (export_csv, "a.csv")):
        path = tmp_path / name
        path.write_text("mine")
        with pytest.raises(FileExistsError, match=name):
            export(patch_explanation(), path)
        assert path.read_text() == "mine"
        export(patch_explanation(), path, overwrite=True)
        assert path.read_text() != "mine"


def test_numbered_exports_keep_existing_files(tmp_path):
    for export, name, numbered_name in (
        (export_geojson, "a.geojson", "a-1.geojson"),
        (export_csv, "a.csv", "a-1.csv"),
    ):
        path = tmp_path / name
        path.write_text("mine")
        assert export(patch_explanation(), path, numbered=True) == tmp_path / numbered_name
        assert path.read_text() == "mine"
    assert len(list(tmp_path.iterdir())) == 4  # no temporaries left


def test_explanation_record_names_its_numbered_map(tmp_path):
    import tifffile

    first = write_explanation(patch_explanation(), tmp_path, "duct")
    second = write_explanation(patch_explanation(), tmp_path, "duct")
    assert (first["tif"].name, first["json"].name) == ("duct.amil.tif", "duct.amil.json")
    assert (second["tif"].name, second["json"].name) == ("duct-1.amil.tif", "duct-1.amil.json")
    assert json.loads(second["json"].read_text())["map_file"] == "duct-1.amil.tif"
    dense = tifffile.imread(second["tif"])
    assert dense.dtype == np.float32 and dense.shape == (64, 96)
    again = write_explanation(patch_explanation(), tmp_path, "duct", overwrite=True)
    assert again == first and len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize(
    "obj,problem",
    [
        (
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [1, float("nan")]},
                "properties": {},
            },
            "non-finite",
        ),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": ["1", 2]},
                "properties": {},
            },
            "non-number",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "not closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, ">= 4 positions"),
        ({"type": "LineString", "coordinates": [[0, 0]]}, ">= 2 positions"),
        (
            {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None}]},
            "properties",
        ),
        ({"type": "FeatureCollection", "features": [{"type": "Banana"}]}, "not a Feature"),
        ({"type": "FeatureCollection"}, "'features' array"),
        ({"type": "Circle", "coordinates": [0, 0]}, "unknown GeoJSON type"),
        ({"type": "Feature", "geometry": None, "properties": {"v": float("inf")}}, "non-finite"),
    ],
)
def test_validate_geojson_finds_problems(obj, problem):
    problems = validate_geojson(obj)
    assert problems and any(problem in p for p in problems), problems


def test_validate_geojson_accepts_valid_geometries():
    ring = [[0, 0], [1, 0], [1, 1], [0, 0]]
    obj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": 1,
                "properties": None,
                "geometry": {
                    "type": "GeometryCollection",
                    "geometries": [
                        {"type": "MultiPolygon", "coordinates": [[ring], [ring]]},
                        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1, 2.5]]]},
                        {"type": "MultiPoint", "coordinates": [[0, 0]]},
                    ],
                },
            }
        ],
    }
    assert validate_geojson(obj) == []


@pytest.mark.parametrize(
    "name, stem",
    [
        ("case.1.png", "case.1"),
        ("case.2.PNG", "case.2"),
        ("slide.ome.tif", "slide"),
        ("slide.ome.tiff", "slide"),
        ("x.tif", "x"),
        ("TCGA-A7.svs", "TCGA-A7"),
        ("b.v2.jpeg", "b.v2"),
        ("scan.v2", "scan.v2"),  # no image suffix: the name is kept whole
        (".png", ".png"),
    ],
)
def test_output_stem_drops_only_the_image_suffix(name, stem):
    from histoview.io.files import output_stem

    assert output_stem(f"/data/{name}") == stem


def test_export_cli_names_outputs_after_the_whole_input_name(tmp_path):
    from PIL import Image

    from histoview.cli import main
    from histoview.preprocessing.phantom import make_phantom

    image = make_phantom("benign", preset="breakhis", seed=15_009).image
    for name in ("case.1.png", "case.2.png"):
        Image.fromarray(image).save(tmp_path / name)
        assert (
            main(
                [
                    "export",
                    str(tmp_path / name),
                    "--method",
                    "amil",
                    "--format",
                    "csv",
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 0
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "case.1.amil.csv",
        "case.2.amil.csv",
    ]
