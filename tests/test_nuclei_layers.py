"""A slide's nuclei in napari: all of them with the graph's edges when zoomed in, an evenly
spread subset without edges when zoomed out, the same subset at every pan."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.explain.slide_graph_outputs import NucleiView
from histoview.preprocessing.nuclei import FEATURE_NAMES
from histoview.preprocessing.slide_nuclei import SlideNuclei
from histoview.viewer._nuclei_layers import spread_order, view_selection

P0 = 0.25  # level-0 um per pixel


def _nuclei(n=30_000, side=40_000, seed=0) -> SlideNuclei:
    rng = np.random.default_rng(seed)
    centroids = rng.uniform(0, side - 1, (n, 2))  # pixel centres inside the slide
    features = np.concatenate(
        [rng.uniform(1, 2, (n, len(FEATURE_NAMES))), rng.uniform(0, 1, (n, 1))], 1
    ).astype(np.float32)
    return SlideNuclei(
        centroids=centroids,
        features=features,
        feature_names=(*FEATURE_NAMES, "importance"),
        tile=np.zeros(n, np.int32),
        tile_boxes=np.array([[0, 0, side, side]], np.int64),
        pixel_size_um=0.5,
        level0_pixel_size_um=P0,
        level0_shape=(side, side),
        region=(0, 0, side, side),
    )


def test_zoomed_in_every_nucleus_and_its_edges():
    nuclei = _nuclei()
    view, rank = NucleiView(nuclei), spread_order(len(nuclei))
    box = (10_000.0, 10_000.0, 2_000.0, 2_000.0)
    sel = view_selection(view, box, rank, max_points=1_000, max_edge_nuclei=1_000)
    inside = view.points(box)
    assert sel.step == 1 and sel.in_view == len(inside) and len(inside) > 20
    np.testing.assert_array_equal(np.sort(sel.indices), np.sort(inside))
    assert sel.segments is not None and len(sel.segments) > 0
    # every edge is shorter than the graph's threshold and touches the view
    d_um = np.linalg.norm(sel.segments[:, 0] - sel.segments[:, 1], axis=1) * P0
    assert (d_um < view.threshold_um).all()


def test_zoomed_out_an_even_subset_without_edges_that_does_not_flicker():
    nuclei = _nuclei()
    view, rank = NucleiView(nuclei), spread_order(len(nuclei))
    whole = (0.0, 0.0, 40_000.0, 40_000.0)
    sel = view_selection(view, whole, rank, max_points=3_000, max_edge_nuclei=1_000)
    assert len(sel.indices) == 3_000 and sel.in_view == len(nuclei) and sel.step == 10
    assert sel.segments is None, "no edges when zoomed out"
    # evenly spread: each quarter of the slide keeps about a quarter of the points
    quarter = (nuclei.centroids[sel.indices] < 20_000).all(1).mean()
    assert 0.2 < quarter < 0.3
    # a pan keeps the nuclei that stay in view (the same subset, no flicker)
    left = view_selection(
        view, (0.0, 0.0, 40_000.0, 30_000.0), rank, max_points=3_000, max_edge_nuclei=1_000
    )
    both = np.intersect1d(sel.indices, view.points((0.0, 0.0, 40_000.0, 30_000.0)))
    assert np.isin(both, left.indices).all()


def test_layers_follow_the_camera(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from histoview.viewer._nuclei_layers import SlideNucleiLayers, prepare_nuclei

    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((400, 400), np.uint8), scale=(100 * P0, 100 * P0))
    slide = viewer.layers[-1]
    # the slide layer stands for a 40,000-px level 0 shown at 1/100: nuclei go on its level 0
    slide.scale, layer0 = (P0, P0), slide
    prepared = prepare_nuclei(_nuclei())
    layers = SlideNucleiLayers(viewer, prepared, layer0, max_points=2_000, max_edge_nuclei=500)
    viewer.reset_view()
    sel = layers.update()
    assert sel.step > 1 and not layers.edges.visible and len(layers.points.data) == 2_000
    assert "1 in" in layers.points.name
    viewer.camera.center = (2_500.0, 2_500.0)
    viewer.camera.zoom = 2.0  # 2 screen px per um: a few hundred um in view
    qtbot.waitUntil(lambda: layers.selection.step == 1, timeout=5_000)
    assert layers.edges.visible and len(layers.edges.data) > 0
    assert len(layers.points.data) == layers.selection.in_view
    # each point has its nucleus's colour (importance percentile over the whole slide)
    np.testing.assert_allclose(layers.points.face_color, prepared.rgba[layers.selection.indices])
    # the points sit where the nuclei are, in world micrometres
    world = layers.points.data_to_world(layers.points.data[0])
    assert np.allclose(np.asarray(world)[-2:], layers.points.data[0] * P0)
