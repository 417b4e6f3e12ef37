"""napari writer contributions: explanation layers saved as GeoJSON/CSV, never overwriting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _geojson import read_geojson_nuclei, validate_geojson

pytestmark = pytest.mark.gui


def _add_explanations(viewer):
    from histoview.explain.run import explain_array
    from histoview.models import create_model
    from histoview.viewer._sample_data import phantom_layers
    from histoview.viewer.overlays import add_explanation_layers

    data, kwargs, _ = phantom_layers("in_situ", seed=2)[0]
    image = viewer.add_image(data, **kwargs)
    meta = {"classes": ["benign", "malignant"]}
    amil = explain_array(data, "amil", create_model("amil").eval(), meta, None)
    graph_meta = {"classes": ["in_situ", "invasive"]}
    graph = explain_array(
        data,
        "graph",
        create_model("rsf-attention").eval(),
        graph_meta,
        None,
        pixel_size_um=0.5,
        importance="attention",
    )
    [grid] = add_explanation_layers(viewer, image, amil)
    points = add_explanation_layers(viewer, image, graph)[-1]
    return grid, points, graph


def test_save_nuclei_and_grid_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    grid, points, graph = _add_explanations(viewer)
    [out] = points.save(str(tmp_path / "nuclei.geojson"), plugin="histoview")
    gj = json.loads(open(out).read())
    assert validate_geojson(gj) == []
    centroids, importance, _ = read_geojson_nuclei(out)
    np.testing.assert_allclose(centroids, graph.geometry.centroids, atol=0.01)
    np.testing.assert_allclose(importance, graph.values, rtol=1e-5, atol=1e-7)
    # saving again does not overwrite: a numbered file appears
    [again] = points.save(str(tmp_path / "nuclei.geojson"), plugin="histoview")
    assert again != out and again.endswith("nuclei-1.geojson")
    [csv] = grid.save(str(tmp_path / "grid.csv"), plugin="histoview")
    lines = open(csv).read().splitlines()
    assert lines[0].startswith("id,x,y,width,height,weight") and len(lines) == 401


def test_plain_layer_is_refused_with_a_clear_message(make_napari_viewer, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer = make_napari_viewer()
    layer = viewer.add_points(np.zeros((3, 2)))
    with pytest.warns(UserWarning):
        assert layer.save(str(tmp_path / "x.geojson"), plugin="histoview") == []
    assert shown and "not a histoview explanation layer" in shown[0]
    assert not (tmp_path / "x.geojson").exists()
