"""The cell graph of Sureka et al., 2020 (histoview.preprocessing.graph)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from skimage import draw

from histoview.preprocessing.graph import (
    DEFAULT_THRESHOLD_UM,
    EDGE_FEATURE_NAMES,
    NucleiGraph,
    build_nuclei_graph,
    graph_from_image,
    load_graph,
    save_graph,
)
from histoview.preprocessing.nuclei import FEATURE_NAMES, detect_nuclei


def random_points(n: int = 200, extent: float = 1000.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, extent, size=(n, 2))


def brute_force_edges(points: np.ndarray, threshold_px: float) -> dict:
    d = squareform(pdist(points))
    i, j = np.nonzero((d < threshold_px) & ~np.eye(len(points), dtype=bool))
    return {(a, b): d[a, b] for a, b in zip(i.tolist(), j.tolist())}


def edge_dict(graph: NucleiGraph) -> dict:
    src, dst = graph.edge_index
    return {(a, b): w for a, b, w in zip(src.tolist(), dst.tolist(), graph.edge_weight)}


def small_tissue() -> np.ndarray:
    """Pink image with a 4 x 4 grid of purple discs (3 um radius at 0.25 um/px)."""
    img = np.empty((240, 240, 3), np.uint8)
    img[:] = (236, 178, 205)
    for r in range(30, 240, 60):
        for c in range(30, 240, 60):
            rr, cc = draw.disk((r, c), 12, shape=img.shape[:2])
            img[rr, cc] = (92, 52, 135)
    return img


def test_default_threshold_is_the_papers_100px_at_bach_resolution():
    assert DEFAULT_THRESHOLD_UM == pytest.approx(100 * 0.42)


@pytest.mark.parametrize("pixel_size_um", [0.2456, 0.5, 1.0])
def test_edges_are_exactly_the_close_pairs(pixel_size_um):
    pts = random_points()
    threshold_um = 60.0
    graph = build_nuclei_graph(pts, threshold_um=threshold_um, pixel_size_um=pixel_size_um)
    expected = brute_force_edges(pts, threshold_um / pixel_size_um)
    got = edge_dict(graph)
    assert set(got) == set(expected)
    assert len(expected) > 0
    assert graph.edge_index.dtype == np.int64 and graph.edge_index.shape == (2, len(expected))
    assert graph.edge_weight.dtype == np.float32 and graph.edge_distance_um.dtype == np.float32
    for key, d_px in expected.items():
        assert got[key] == pytest.approx(1 - d_px * pixel_size_um / threshold_um, abs=1e-6)
    src, dst = graph.edge_index
    np.testing.assert_allclose(
        graph.edge_distance_um,
        np.linalg.norm(pts[src] - pts[dst], axis=1) * pixel_size_um,
        rtol=1e-6,
    )
    # symmetric, no self loops, weights in (0, 1], sorted by (source, target)
    assert all(got[(b, a)] == w for (a, b), w in got.items())
    assert not np.any(src == dst)
    assert np.all((graph.edge_weight > 0) & (graph.edge_weight <= 1))
    assert np.all(np.diff(src * len(pts) + dst) > 0)


def test_threshold_is_strict_and_converted_with_pixel_size():
    pts = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 30.0]])
    # 10 px at 0.5 um/px = 5 um: 5 um is not < 5 um, so no edge at exactly the threshold
    assert build_nuclei_graph(pts, threshold_um=5.0, pixel_size_um=0.5).num_edges == 0
    g = build_nuclei_graph(pts, threshold_um=5.01, pixel_size_um=0.5)
    assert g.num_edges == 2
    # the same pairs in micrometres at another resolution give the same graph
    g2 = build_nuclei_graph(pts * 2, threshold_um=5.01, pixel_size_um=0.25)
    np.testing.assert_array_equal(g.edge_index, g2.edge_index)
    np.testing.assert_allclose(g.edge_weight, g2.edge_weight)
    g3 = build_nuclei_graph(pts, threshold_um=10.01, pixel_size_um=0.5)  # 20 px
    assert g3.num_edges == 4
    assert g3.edge_distance_um.max() == pytest.approx(10.0)


def test_coincident_nuclei_get_weight_one():
    g = build_nuclei_graph(np.zeros((2, 2)), threshold_um=5.0, pixel_size_um=1.0)
    np.testing.assert_array_equal(g.edge_weight, [1.0, 1.0])


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_node_graphs(n, tmp_path: Path):
    g = build_nuclei_graph(np.zeros((n, 2)), pixel_size_um=0.5, features=np.ones((n, 3)))
    assert len(g) == n and g.num_edges == 0
    assert g.edge_index.shape == (2, 0) and g.edge_weight.shape == (0,)
    assert g.node_features.shape == (n, 3) and g.feature_names == ("f0", "f1", "f2")
    assert g.edge_features().shape == (0, len(EDGE_FEATURE_NAMES))
    back = load_graph(save_graph(g, tmp_path / "g.npz"))
    assert len(back) == n and back.edge_index.shape == (2, 0)


def test_graph_from_nuclei_and_image():
    img = small_tissue()
    nuclei = detect_nuclei(img, 0.25)
    assert len(nuclei) == 16
    g = build_nuclei_graph(nuclei, threshold_um=16.0)  # grid spacing 60 px = 15 um
    assert g.feature_names == FEATURE_NAMES
    np.testing.assert_array_equal(g.node_features, nuclei.features)
    assert g.pixel_size_um == 0.25
    degree = np.bincount(g.edge_index[0], minlength=16)
    assert sorted(degree.tolist()) == [2] * 4 + [3] * 8 + [4] * 4  # 4-neighbour grid
    g_img = graph_from_image(img, 0.25, threshold_um=16.0, include_position=True)
    assert g_img.feature_names == FEATURE_NAMES + ("row_norm", "col_norm")
    pos = g_img.node_features[:, -2:]
    assert np.all((pos >= 0) & (pos <= 1))
    np.testing.assert_allclose(pos * 240, g_img.centroids, atol=1e-3)
    with pytest.raises(ValueError, match="conflicts"):
        build_nuclei_graph(nuclei, pixel_size_um=0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pixel_size_um"):
        build_nuclei_graph(random_points(5))
    with pytest.raises(ValueError):
        build_nuclei_graph(random_points(5), pixel_size_um=1.0, threshold_um=0.0)
    with pytest.raises(ValueError):
        build_nuclei_graph(np.zeros((5, 3)), pixel_size_um=1.0)
    with pytest.raises(ValueError):
        build_nuclei_graph(
            random_points(5), pixel_size_um=1.0, features=np.ones((5, 2)), feature_names=("a",)
        )


def test_save_load_round_trip_without_pickle(tmp_path: Path):
    pts = random_points(300)
    feats = np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32)
    g = build_nuclei_graph(
        pts,
        threshold_um=30.0,
        pixel_size_um=0.5,
        features=feats,
        feature_names=("a", "bb", "c", "dddd"),
    )
    path = save_graph(g, tmp_path / "graph")  # suffix added
    assert path.suffix == ".npz" and path.exists()
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    back = load_graph(path)
    for name in ("centroids", "node_features", "edge_index", "edge_weight", "edge_distance_um"):
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name))
        assert getattr(back, name).dtype == getattr(g, name).dtype
    assert back.feature_names == g.feature_names
    assert (back.threshold_um, back.pixel_size_um) == (30.0, 0.5)
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError):
        load_graph(bad)


def test_edge_features_direction():
    g = build_nuclei_graph(
        np.array([[0.0, 0.0], [0.0, 3.0], [4.0, 0.0]]), threshold_um=10.0, pixel_size_um=1.0
    )
    ef = dict(zip(map(tuple, g.edge_index.T.tolist()), g.edge_features()))
    np.testing.assert_allclose(ef[(0, 1)], [0.7, 0.3, 1.0, 0.0], atol=1e-6)  # along +col
    np.testing.assert_allclose(ef[(1, 0)], [0.7, 0.3, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ef[(0, 2)], [0.6, 0.4, 0.0, 1.0], atol=1e-6)  # along +row
    np.testing.assert_allclose(ef[(1, 2)][:2], [0.5, 0.5], atol=1e-6)


def test_to_pyg_shapes():
    pytest.importorskip("torch_geometric")
    import torch

    pts = random_points(150)
    g = build_nuclei_graph(pts, threshold_um=50.0, pixel_size_um=0.5, features=np.ones((150, 5)))
    data = g.to_pyg(y=1)
    e = g.num_edges
    assert data.num_nodes == 150
    assert data.x.shape == (150, 5) and data.x.dtype == torch.float32
    assert data.edge_index.shape == (2, e) and data.edge_index.dtype == torch.long
    assert data.edge_attr.shape == (e, len(EDGE_FEATURE_NAMES)) and e > 0
    assert data.edge_weight.shape == (e,)
    assert data.pos.shape == (150, 2)
    assert data.y.tolist() == [1]
    from torch_geometric.utils import is_undirected

    # undirected as a weighted graph (the direction features are antisymmetric by design)
    assert is_undirected(data.edge_index, data.edge_weight)
    empty = build_nuclei_graph(np.zeros((0, 2)), pixel_size_um=0.5).to_pyg()
    assert empty.num_nodes == 0 and empty.edge_index.shape == (2, 0) and "y" not in empty


def test_thousands_of_nuclei_build_fast():
    pts = random_points(5000, extent=4000.0, seed=3)  # ~MoNuSeg density over 1000 x 1000 um
    build_nuclei_graph(pts[:10], pixel_size_um=0.25)
    t0 = time.perf_counter()
    g = build_nuclei_graph(pts, threshold_um=DEFAULT_THRESHOLD_UM, pixel_size_um=0.25)
    assert time.perf_counter() - t0 < 5.0
    assert len(g) == 5000 and g.num_edges > 0
