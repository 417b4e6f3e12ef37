"""Nuclei on a whole slide: tile-by-tile detection without doubled or cut nuclei at tile
borders (histoview.preprocessing.slide_nuclei), the slide's cell graph and its importance,
GeoJSON for QuPath and the density map (histoview.explain.slide_graph*)."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid

import numpy as np
import pytest
import torch
from skimage import draw

from _geojson import read_geojson_nuclei, validate_geojson
from histoview.explain.graph import occlusion_importance
from histoview.explain.run import load_for_method
from histoview.explain.slide_graph import (
    CONTEXT_UM,
    NucleusWindows,
    SlideGraphCancelled,
    build_slide_graph,
    explain_slide_graph,
    pooled_prediction,
    window_occlusion,
)
from histoview.explain.slide_graph_outputs import NucleiView
from histoview.explain.slide_run import explain_slide
from histoview.io import ImageReadError, open_image, write_pyramidal_tiff
from histoview.models import create_model
from histoview.models.inputs import GRAPH_THRESHOLD_UM
from histoview.preprocessing.graph import build_nuclei_graph
from histoview.preprocessing.nuclei import FEATURE_NAMES, NucleiDetectorConfig, detect_nuclei
from histoview.preprocessing.slide_nuclei import (
    DetectionCancelled,
    SlideNuclei,
    detect_slide_nuclei,
    load_slide_nuclei,
)

L0 = 0.25  # um/px of the synthetic slide's level 0
PX = 0.5  # um/px the nuclei are detected at (the bundled graph model's)
TILE = 256  # detection tile core, pixels at PX: borders every 512 level-0 pixels
SHAPE = (1792, 2304)  # level 0: 3.5 x 4.5 tiles
PINK = (236, 178, 205)
PURPLE = (92, 52, 135)
RADIUS_UM = 3.0


def _border_centres(rng) -> list[tuple[float, float]]:
    """Level-0 centres on tile borders (exactly between two pixels, 511.5 = the border
    between model pixels 255 and 256), on tile corners, just beside borders, and inside."""
    step = 2 * TILE  # level-0 pixels per tile
    borders_r = [step * k - 0.5 for k in range(1, SHAPE[0] // step + 1)]
    borders_c = [step * k - 0.5 for k in range(1, SHAPE[1] // step + 1)]
    centres = [(r, c) for r in borders_r for c in borders_c]  # corners
    for r in borders_r:  # on horizontal borders, some straddling by a few pixels
        for c in np.arange(80, SHAPE[1] - 80, 150.0):
            centres.append((r + rng.choice([0.0, 0.0, -5.0, 6.0]), c))
    for c in borders_c:
        for r in np.arange(80, SHAPE[0] - 80, 150.0):
            centres.append((r, c + rng.choice([0.0, 0.0, -5.0, 6.0])))
    for _ in range(400):  # interior
        centres.append(tuple(rng.uniform(40, np.array(SHAPE) - 40)))
    # keep nuclei at least 11 um apart (the detector need not split touching discs here)
    kept: list[tuple[float, float]] = []
    for p in centres:
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) * L0 > 11 for q in kept):
            kept.append(p)
    return kept


def synthetic_slide(path, *, glass_cols: int = 0):
    """A pyramidal RGB TIFF (level 0 at 0.25 um/px) of pink tissue with purple round nuclei
    on and beside the detection tile borders; the rightmost ``glass_cols`` level-0 columns
    are glass (white). Returns the level-0 centres of the nuclei."""
    rng = np.random.default_rng(3)
    img = np.empty((*SHAPE, 3), np.float32)
    img[:] = PINK
    centres = _border_centres(rng)
    rad = RADIUS_UM / L0
    for r, c in centres:
        rr, cc = draw.disk((r, c), rad, shape=SHAPE)
        img[rr, cc] = PURPLE
    img += rng.normal(0, 4, img.shape)
    if glass_cols:
        img[:, -glass_cols:] = 250
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, rgb, tile=256, pixel_size_um=L0, min_size=256)
    return np.array(centres)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    centres = synthetic_slide(path)
    return path, centres


#: a detector whose output at a pixel depends on its surroundings only (fixed threshold, seeds
#: from the LoG alone): tiling it must give exactly the single-image nuclei
LOCAL = NucleiDetectorConfig(threshold_scale=0.0, min_hematoxylin=0.05, distance_weight=0.0)


@pytest.fixture(scope="module")
def slide_nuclei(slide):
    with open_image(slide[0]) as src:
        return detect_slide_nuclei(src, PX, tile_px=TILE)


def _single_image(path, config=None):
    """The single-image detection of the whole slide at PX, in one piece."""
    with open_image(path) as src:
        rgb = src.read_rect((0, 0), (SHAPE[0] // 2, SHAPE[1] // 2), PX)
    return detect_nuclei(rgb, PX, config)


@pytest.fixture(scope="module")
def local_nuclei(slide):
    """(tiled, single-image) nuclei of the slide with the local detector."""
    with open_image(slide[0]) as src:
        tiled = detect_slide_nuclei(src, PX, tile_px=TILE, config=LOCAL)
    return tiled, _single_image(slide[0], LOCAL)


def _match(found_l0, nuclei):
    """Index of the single-image nucleus nearest each slide nucleus, and the distance."""
    ref = (nuclei.centroids + 0.5) * (PX / L0) - 0.5  # to level-0 pixels
    d = np.hypot(*(found_l0[:, None, :] - ref[None, :, :]).transpose(2, 0, 1))
    match = d.argmin(axis=1)
    return match, d[np.arange(len(found_l0)), match]


def _on_border(centroids):
    step = 2 * TILE  # level-0 pixels per tile
    corner = centroids + 0.5
    return (np.abs(corner / step - np.round(corner / step)) * step < 12).any(axis=1)


def test_border_nuclei_are_detected_once_and_whole(slide, slide_nuclei):
    """Every placed nucleus (many on tile borders and corners) is found exactly once."""
    _, centres = slide
    found = slide_nuclei.centroids
    d = np.hypot(*(found[:, None, :] - centres[None, :, :]).transpose(2, 0, 1)) * L0
    per_true = (d < 2.0).sum(axis=0)
    assert per_true.min() == 1 and per_true.max() == 1, np.bincount(per_true)
    assert len(found) == len(centres)
    assert _on_border(found).sum() > 40  # the test means something: nuclei straddle borders
    st = slide_nuclei.stats
    assert st["merged"] == 0 and st["cut"] == 0 and st["retried"] == 0
    # the same nuclei, whole, as one detection of the whole image; the detector's Otsu
    # threshold is chosen per image, so a few areas differ by a few pixels (0.25 um^2 each)
    whole = _single_image(slide[0])
    assert len(whole) == len(slide_nuclei)
    match, dist = _match(found, whole)
    assert len(np.unique(match)) == len(match) and dist.max() < 1.0
    area, ref = slide_nuclei.feature("area_um2"), whole.features[match, 0]
    assert np.abs(area - ref).max() <= 4 * PX**2 and np.mean(area == ref) > 0.95
    assert abs(area.mean() - np.pi * RADIUS_UM**2) < 0.15 * np.pi * RADIUS_UM**2


def test_tiles_give_exactly_the_single_image_nuclei_with_a_local_detector(slide, local_nuclei):
    tiled, whole = local_nuclei
    assert len(tiled) == len(whole) == len(slide[1])
    match, dist = _match(tiled.centroids, whole)
    assert len(np.unique(match)) == len(match)
    np.testing.assert_allclose(dist, 0, atol=1e-9)
    ref = whole.features[match]
    o = tiled.feature_names.index("orientation")  # undefined for round nuclei: left out
    np.testing.assert_allclose(
        np.delete(tiled.features, o, 1), np.delete(ref, o, 1), rtol=1e-6, atol=1e-5
    )


def test_tissue_mask_skips_glass_tiles_and_progress(slide):
    limit = SHAPE[1] - (2 * TILE + 300)  # call it glass right of this level-0 column

    def tissue(row, col, height, width):  # the tissue fraction of a level-0 box
        return max(0, min(col + width, limit) - col) / width

    events = []
    region = (0, 0, 4 * TILE, SHAPE[1])  # two rows of tiles
    with open_image(slide[0]) as src:
        nuclei = detect_slide_nuclei(
            src, PX, tile_px=TILE, region=region, tissue=tissue, progress=events.append
        )
    st = nuclei.stats
    assert st["tiles"] == 2 * 5 and st["glass"] == 2 * 2 and st["detected"] == 2 * 3
    assert [e["done"] for e in events] == list(range(5, 11))
    assert events[-1]["total"] == 10 and events[-1]["skipped"] == 4
    assert {"elapsed_s", "remaining_s", "tile_box", "nuclei"} <= set(events[0])
    assert events[-1]["nuclei"] == len(nuclei) > 0
    assert (nuclei.centroids[:, 1] + 0.5 < 3 * 2 * TILE).all()  # none from the glass tiles


def test_region_cancel_resume_and_save(slide, slide_nuclei, tmp_path):
    region = (512, 512, 1024, 1024)  # two tiles by two, level-0 pixels
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2  # after two tiles

    cache = tmp_path / "tiles"
    with open_image(slide[0]) as src:
        with pytest.raises(DetectionCancelled) as info:
            detect_slide_nuclei(
                src, PX, tile_px=TILE, region=region, cancel=cancel, cache_dir=cache
            )
        assert info.value.done == 2 and info.value.total == 4
        assert len(list(cache.glob("tile-*.npz"))) == 2
        resumed = detect_slide_nuclei(src, PX, tile_px=TILE, region=region, cache_dir=cache)
    assert resumed.stats["resumed"] == 2
    inside = slide_nuclei.in_box(region)
    order = np.lexsort(resumed.centroids.T[::-1])
    expected = slide_nuclei.centroids[inside]
    np.testing.assert_allclose(
        resumed.centroids[order], expected[np.lexsort(expected.T[::-1])], atol=1e-9
    )
    back = load_slide_nuclei(resumed.save(tmp_path / "nuclei.npz"))
    np.testing.assert_array_equal(back.centroids, resumed.centroids)
    assert back.stats["resumed"] == 2 and back.region == region


class _CorruptTile:
    """An ImageSource whose reads touching one level-0 point fail like a corrupt tile."""

    def __init__(self, src, point):
        self._src, self._point = src, point

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read_rect(self, location, size, pixel_size_um, **kw):
        s = pixel_size_um / self._src.pixel_size_um
        r, c = self._point
        if (
            location[0] <= r < location[0] + size[0] * s
            and location[1] <= c < location[1] + size[1] * s
        ):
            raise ImageReadError(self._src.path, "cannot decode pixels (corrupt tile)")
        return self._src.read_rect(location, size, pixel_size_um, **kw)


def test_corrupt_tile_is_skipped_and_listed(slide):
    point = (1700, 2200)  # in the last tile; reads of its neighbours reach it too
    region = (512, 1024, 1280, 1280)  # the last three tiles by three
    with open_image(slide[0]) as src:
        nuclei = detect_slide_nuclei(_CorruptTile(src, point), PX, tile_px=TILE, region=region)
    failed = nuclei.stats["failed_tiles"]
    assert failed and all("corrupt tile" in f["error"] for f in failed)
    boxes = [f["box"] for f in failed]
    assert [1536, 2048, 256, 256] in boxes and len(boxes) <= 4
    assert nuclei.stats["detected"] == nuclei.stats["tiles"] - len(failed) > 0


def test_bad_inputs(slide):
    with open_image(slide[0]) as src:
        with pytest.raises(ValueError, match="finer than the slide's level 0"):
            detect_slide_nuclei(src, 0.1)
        with pytest.raises(ValueError, match="outside the slide"):
            detect_slide_nuclei(src, PX, region=(5000, 0, 100, 100))


# -- the slide's cell graph ---------------------------------------------------------------------
def _random_nuclei(n: int = 1200, seed: int = 0, density: float = 3e-3):
    """``n`` nuclei at random on a square at the phantoms' density (per um^2), level-0 pixels
    of 0.25 um, with morphology-like features."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n / density) / L0) + 1
    feats = (rng.normal(size=(n, len(FEATURE_NAMES))) * 3 + 10).astype(np.float32)
    return SlideNuclei(
        centroids=rng.uniform(0, side, (n, 2)),
        features=feats,
        feature_names=FEATURE_NAMES,
        tile=np.zeros(n, np.int32),
        tile_boxes=np.zeros((0, 4), np.int64),
        pixel_size_um=PX,
        level0_pixel_size_um=L0,
        level0_shape=(side, side),
        region=(0, 0, side, side),
    )


def test_slide_graph_edges_equal_the_single_image_graph(local_nuclei):
    """Tiled nuclei (level-0 pixels) give the single-image graph of the whole image, edge for
    edge: same pairs, weights and edge features."""
    tiled, whole = local_nuclei
    graph = build_slide_graph(tiled, threshold_um=GRAPH_THRESHOLD_UM)
    ref = build_nuclei_graph(whole, threshold_um=GRAPH_THRESHOLD_UM)
    match, _ = _match(tiled.centroids, whole)  # slide nucleus i is single-image match[i]
    assert graph.num_edges == ref.num_edges > 1000
    src_i, dst_i = match[graph.edge_index]
    order = np.lexsort((dst_i, src_i))
    np.testing.assert_array_equal(np.stack([src_i, dst_i])[:, order], ref.edge_index)
    np.testing.assert_allclose(graph.edge_weight[order], ref.edge_weight, atol=1e-6)
    np.testing.assert_allclose(graph.edge_features()[order], ref.edge_features(), atol=1e-5)


@pytest.mark.parametrize("name", ["test_rsf", "test_rsf_attention", "classwise", "bundled"])
def test_pooled_prediction_is_the_model_on_the_whole_graph(name):
    """Pooling 1 summed window by window gives the model's logits and attention on the whole
    slide graph (small windows: many pieces)."""
    nuclei = _random_nuclei()
    torch.manual_seed(0)
    if name == "bundled":  # sigmoid gates on morphology (the demo weights)
        model = load_for_method("graph", device="cpu")[0]
    elif name == "classwise":
        model = create_model("test_rsf_attention", num_classes=3, classwise_attention=True)
    else:
        model = create_model(name, num_classes=3)
    model.eval()
    data = build_slide_graph(nuclei, threshold_um=GRAPH_THRESHOLD_UM).to_pyg()
    with torch.no_grad():
        ref = model(data)[0].double().numpy()
    logits, attention = pooled_prediction(
        model, nuclei, threshold_um=GRAPH_THRESHOLD_UM, core_um=120.0
    )
    # float32 rounding: the reference sums thousands of nuclei in float32
    np.testing.assert_allclose(logits, ref, atol=5e-5 * np.abs(ref).max())
    if model.attention is None:
        assert attention is None
        return
    with torch.no_grad():
        _, ref_att = model(data, return_attention=True)
    ref_att = ref_att.numpy()
    np.testing.assert_allclose(attention, ref_att, atol=1e-4 * ref_att.max(), rtol=1e-4)


def test_window_occlusion_is_occlusion_on_the_window_graph():
    nuclei = _random_nuclei(500)
    torch.manual_seed(1)
    model = create_model("test_rsf", num_classes=2).eval()
    imp, boxes, probs, counts = window_occlusion(
        model, nuclei, target_class=1, threshold_um=GRAPH_THRESHOLD_UM, window_um=150.0
    )
    windows = NucleusWindows(nuclei.centroids, 150.0 / L0, CONTEXT_UM / L0)
    assert len(boxes) == len(windows) > 4 and counts[:, 0].sum() == len(nuclei)
    box, members, n_own = list(windows)[len(windows) // 2]
    # the window: owned nuclei in its core, the context within 64 um of it
    corner = nuclei.centroids[members] + 0.5
    assert np.all((corner[:n_own] >= box[:2]) & (corner[:n_own] < np.add(box[:2], box[2:])))
    sub = dataclasses.replace(
        nuclei, centroids=nuclei.centroids[members], features=nuclei.features[members]
    )
    data = build_slide_graph(sub, threshold_um=GRAPH_THRESHOLD_UM).to_pyg()
    expected = occlusion_importance(model, data, k=1, target_class=1)[:n_own]
    np.testing.assert_allclose(imp[members[:n_own]], expected, atol=1e-6)
    assert np.abs(imp).max() > 0


def test_edges_in_view_and_cancel():
    nuclei = _random_nuclei(1500)
    torch.manual_seed(2)
    model = create_model("test_rsf_attention", num_classes=2)
    result = explain_slide_graph(model, nuclei, importance="attention")
    assert result.importance_kind == "attention" and len(result.importance) == len(nuclei)
    graph = build_slide_graph(nuclei, threshold_um=GRAPH_THRESHOLD_UM)
    box = (700.0, 900.0, 1000.0, 800.0)
    view = NucleiView(result.nuclei, result.threshold_um)
    seg, weight, pairs = view.edges(box)
    inside = np.zeros(len(nuclei), bool)
    inside[view.points(box)] = True
    a, b = graph.edge_index
    want = (a < b) & (inside[a] | inside[b])
    assert len(pairs) == want.sum() > 100
    got = {tuple(p) for p in np.sort(pairs, axis=1)}
    assert got == {(int(i), int(j)) for i, j in zip(a[want], b[want])}
    np.testing.assert_allclose(seg, nuclei.centroids[pairs])
    assert len(view.edges(box, max_edges=10)[1]) == 10
    calls = []
    with pytest.raises(SlideGraphCancelled):
        explain_slide_graph(model, nuclei, cancel=lambda: calls.append(1) or len(calls) > 2)


def test_graph_method_on_a_slide_geojson_for_qupath_and_density_map(tmp_path, monkeypatch):
    """``explain_slide(..., "graph")``: every nucleus once (also across the engine's tiles),
    GeoJSON points QuPath imports, the density map as an OME-TIFF placed on the slide."""
    import histoview.explain.slide_graph_processor as proc

    monkeypatch.setattr(proc, "TILE_SIZE", 512)  # stride 288: many tile borders
    path = tmp_path / "slide.tif"
    centres = synthetic_slide(path)
    res = explain_slide(
        path, "graph", out_dir=tmp_path, workers=0, options={"importance": "occlusion"}
    )
    summary = res.summary
    assert summary["num_nuclei"] == len(centres) and summary["importance"] == "occlusion"
    assert summary["detection"]["cut"] == 0 and sum(summary["probabilities"].values()) > 0.99
    files = summary["nuclei_files"]
    nuclei = load_slide_nuclei(tmp_path / files["nuclei"])
    d = np.hypot(*(nuclei.centroids[:, None] - centres[None]).transpose(2, 0, 1)) * L0
    assert np.all((d < 2.0).sum(axis=0) == 1)  # each placed nucleus found once
    # GeoJSON: valid, QuPath's form (detections, Points, UUID ids, class, numeric measurements)
    geo = tmp_path / files["geojson"]
    assert validate_geojson(geo) == []
    cents, imps, props = read_geojson_nuclei(geo)
    np.testing.assert_allclose(cents, nuclei.centroids, atol=0.01)
    np.testing.assert_allclose(imps, nuclei.feature("importance"), rtol=1e-5, atol=1e-7)
    feature = json.loads(geo.read_text())["features"][0]
    uuid.UUID(feature["id"])
    assert feature["geometry"]["type"] == "Point"
    p = feature["properties"]
    assert p["objectType"] == "detection" and set(p["classification"]) == {"name", "color"}
    assert all(isinstance(v, float | int) for v in p["measurements"].values())
    assert {"importance", "area_um2"} <= set(p["measurements"])
    # the density map: 16 um cells over the slide, three channels
    with open_image(res.outputs["map"]) as density:
        assert density.pixel_size_um == pytest.approx(16.0)
        assert density.shape[:2] == (math.ceil(SHAPE[0] * L0 / 16), math.ceil(SHAPE[1] * L0 / 16))
    # a rerun keeps the first run's files and names all of its own alike (maps, summary,
    # GeoJSON and nuclei table: slide-1.graph.*), so they read as one run in the folder
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    again = explain_slide(
        path, "graph", out_dir=tmp_path, workers=0, options={"importance": "occlusion"}
    )
    names = [p.name for k, p in again.outputs.items() if k != "tissue"]
    names += list(again.summary["nuclei_files"].values())
    assert names and all(n.startswith("slide-1.graph.") for n in names), names
    assert all((tmp_path / n).stat().st_mtime_ns == t for n, t in before.items())
