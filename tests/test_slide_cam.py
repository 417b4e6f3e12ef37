"""CAM methods on a slide: batched raw maps, overlap blending, slide-wide scale, DT threshold,
seam score (histoview.explain.slide_cam, slide_norm, slide_cam_processor)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from histoview.explain.base import peak_normalised  # noqa: E402
from histoview.explain.gradcam import (  # noqa: E402
    GradCAM,
    GradCAMPlusPlus,
    dynamic_threshold,
    explain_cnn,
)
from histoview.explain.slide_cam import (  # noqa: E402
    WINDOWS,
    BlendAccumulator,
    CellGrid,
    blend_window,
    blend_window_2d,
    tile_cams,
    tile_node_attention,
    tile_values,
)
from histoview.explain.slide_norm import (  # noqa: E402
    SeamMeter,
    iter_blocks,
    robust_histogram,
    seam_score,
    slide_scale,
    value_histogram,
)
from histoview.models import create_model  # noqa: E402
from histoview.preprocessing.transforms import to_tensor  # noqa: E402

DEMO = "customnet-phantom"


def _demo_model():
    from histoview.models.checkpoint import load_model
    from histoview.models.library import bundled_checkpoint

    model, meta = load_model(bundled_checkpoint(DEMO), device="cpu")
    return model, meta


def _tiles(image, tile, overlap):
    """Tiles of ``image`` (white past its edge): [(i, j, (T, T, 3) uint8)], and the grid shape."""
    stride = tile - overlap
    H, W = image.shape[:2]
    rows, cols = (max(1, -(-(n - overlap) // stride)) for n in (H, W))
    pad = np.full((rows * stride + overlap, cols * stride + overlap, 3), 255, np.uint8)
    pad[:H, :W] = image
    out = [
        (i, j, pad[i * stride : i * stride + tile, j * stride : j * stride + tile])
        for i in range(rows)
        for j in range(cols)
    ]
    return out, (rows, cols)


def _blend(results, grid: CellGrid, kind: str, channels: int = 1):
    acc = BlendAccumulator(
        np.zeros((*grid.shape, channels), np.float32),
        np.zeros(grid.shape, np.float32),
        blend_window_2d(grid.tile, grid.overlap, kind),
    )
    for (i, j), values in results:
        acc.add(*grid.origin(i, j), values)
    return acc.blended()


@pytest.mark.parametrize("engine_cls", [GradCAM, GradCAMPlusPlus])
@pytest.mark.parametrize("name", ["test_cnn", "test_dalaresnet"])
def test_batched_raw_cam_equals_single_image_cam(name, engine_cls):
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.model_config.input_size
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (5, *size, 3), dtype=np.uint8)
    x = to_tensor(tiles, model.model_config.mean, model.model_config.std)
    batch = tile_cams(engine_cls(model), x, target_class=1)
    assert batch.maps.shape[0] == 5 and batch.maps.shape[1] < size[0]  # not upsampled
    assert batch.stride * batch.maps.shape[1] == size[0]
    method = "gradcam" if engine_cls is GradCAM else "gradcam++"
    for i, tile in enumerate(tiles):
        alone = explain_cnn(model, tile, method=method, target_class=1)
        raw = torch.from_numpy(batch.maps[i])[None, None]
        up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        ref = alone.values * alone.extra["cam_max"]  # the single image's map before normalising
        assert np.allclose(up, ref, rtol=1e-4, atol=1e-5 * max(float(ref.max()), 1e-12))
        assert np.allclose(batch.probabilities[i], alone.probabilities, atol=1e-5)
        one = tile_cams(engine_cls(model), x[i : i + 1], target_class=1)
        assert np.allclose(one.maps[0], batch.maps[i], rtol=1e-4, atol=1e-7)


def test_node_attention_tiles_are_rmcg_attention_times_nodes():
    from histoview.explain.rmcg import explain_rmcg

    torch.manual_seed(0)
    model = create_model("test_rmcg").eval()
    size = model.model_config.input_size
    tiles = np.random.default_rng(1).integers(0, 256, (3, *size, 3), dtype=np.uint8)
    x = to_tensor(tiles, model.model_config.mean, model.model_config.std)
    batch = tile_node_attention(model, x, target_class=1)
    h, w = batch.maps.shape[1:]
    assert np.allclose(batch.maps.sum((1, 2)), h * w, rtol=1e-4)
    for i, tile in enumerate(tiles):
        alone = explain_rmcg(model, tile, target_class=1)
        assert np.allclose(
            batch.maps[i], alone.values * alone.extra["attention_max"] * h * w, rtol=1e-3, atol=1e-5
        )


def test_windows():
    lin = blend_window(8, 2)
    assert np.allclose(lin, [0.25, 0.75, 1, 1, 1, 1, 0.75, 0.25])
    # neighbours' linear weights over their shared band sum to 1 (a partition of unity)
    assert np.allclose(lin[-2:] + lin[:2], 1)
    assert np.allclose(blend_window(8, 2, "crop") > 0.5, [0, 1, 1, 1, 1, 1, 1, 0])
    assert np.allclose(blend_window(7, 3, "crop") > 0.5, [0, 1, 1, 1, 1, 0, 0])
    assert (blend_window(8, 2, "hann") >= 0.05).all()
    with pytest.raises(ValueError, match="half the tile"):
        blend_window(8, 5)
    with pytest.raises(ValueError, match="unknown window"):
        blend_window(8, 2, "gauss")


@pytest.mark.parametrize("kind", WINDOWS)
def test_blending_reproduces_constant_and_ramp_maps_without_seams(kind):
    grid = CellGrid((8, 8), (2, 2), (40, 33))
    gi, gj = grid.grid_shape
    rr, cc = np.mgrid[: grid.shape[0] + 8, : grid.shape[1] + 8].astype(np.float32)
    ramp = 0.37 * rr - 0.21 * cc + 5
    missing = {(1, 2), (3, 0)}  # background tiles: their cells come from the neighbours
    tiles = [(i, j) for i in range(gi) for j in range(gj) if (i, j) not in missing]
    for field in (np.full_like(ramp, 2.5), ramp):
        results = []
        for i, j in tiles:
            r, c = grid.origin(i, j)
            results.append(((i, j), field[r : r + 8, c : c + 8]))
        merged = _blend(results, grid, kind)[..., 0]
        covered = np.isfinite(merged)
        truth = field[: grid.shape[0], : grid.shape[1]]
        assert covered.mean() > 0.9
        assert np.allclose(merged[covered], truth[covered], atol=1e-4)


def test_linear_window_weights_sum_to_one_where_neighbours_overlap():
    grid = CellGrid((8, 8), (2, 2), (6 * 5 + 2, 6 * 5 + 2))
    gi, gj = grid.grid_shape
    acc = BlendAccumulator(
        np.zeros((*grid.shape, 1), np.float32),
        np.zeros(grid.shape, np.float32),
        blend_window_2d((8, 8), (2, 2)),
    )
    for i in range(gi):
        for j in range(gj):
            acc.add(*grid.origin(i, j), np.ones((8, 8)))
    inner = np.asarray(acc.weight)[2:-2, 2:-2]  # away from the slide's edge
    assert np.allclose(inner, 1)


def test_accumulator_crops_tiles_past_the_edge():
    acc = BlendAccumulator(
        np.zeros((5, 6, 2), np.float32), np.zeros((5, 6), np.float32), np.ones((4, 4), np.float32)
    )
    acc.add(3, 4, np.ones((4, 4, 2)))
    acc.add(-2, -1, 2 * np.ones((4, 4, 2)))
    out = acc.blended()
    assert np.allclose(out[3:, 4:], 1) and np.allclose(out[:2, :3], 2)
    assert np.isnan(out[2, 3]).all()
    with pytest.raises(ValueError, match="do not fit"):
        acc.add(0, 0, np.ones((3, 3, 2)))


def test_seam_score_blended_against_mosaic_on_the_demo_model():
    """Real tiles of a phantom through the demo weights: blended <= 1.2, crop mosaic worse."""
    from histoview.preprocessing.phantom import make_phantom

    model, _ = _demo_model()
    image = make_phantom("invasive", shape=(512, 512), pixel_size_um=0.5, seed=3).image
    cfg = model.model_config
    tiles, grid_shape = _tiles(image, 128, 32)
    x = to_tensor(np.stack([t for _, _, t in tiles]), cfg.mean, cfg.std)
    maps = tile_cams(GradCAM(model), x, target_class=1)
    grid = CellGrid((8, 8), (2, 2), (512 // 16, 512 // 16), grid_shape)
    results = [((i, j), tile_values(maps, k)) for k, (i, j, _) in enumerate(tiles)]
    scores = {}
    for kind in ("linear", "crop"):
        merged = _blend(results, grid, kind, channels=2)
        hist = value_histogram(lambda m=merged: [m[..., 0]])
        scores[kind] = seam_score(slide_scale(hist).normalise(merged[..., 0]), grid)
    assert scores["linear"]["seam_score"] <= 1.2, scores
    assert scores["crop"]["seam_score"] > scores["linear"]["seam_score"], scores
    assert scores["linear"]["border_pairs"] > 50 and scores["linear"]["inside_pairs"] > 500


def test_seam_meter_streams_like_the_whole_map_and_sees_seams():
    rng = np.random.default_rng(0)
    grid = CellGrid((8, 8), (2, 2), (50, 47))
    smooth = np.add.outer(np.sin(np.arange(50) / 5), np.cos(np.arange(47) / 7))
    values = smooth + 0.01 * rng.standard_normal((50, 47))
    values[3, 5] = np.nan
    whole = seam_score(values, grid)
    meter = SeamMeter(grid)
    for r in range(0, 50, 7):
        meter.add(slice(r, min(r + 7, 50)), values[r : r + 7])
    assert meter.result() == pytest.approx(whole)
    assert 0.5 < whole["seam_score"] < 1.5
    # a mosaic whose tiles have different scales: seams
    cols = grid.grid_shape[1]
    owners = grid.owner(0, np.arange(50))[:, None] * cols + grid.owner(1, np.arange(47))[None]
    scaled = values * (1 + rng.random(owners.max() + 1))[owners]
    assert seam_score(scaled, grid)["seam_score"] > 1.5


def test_histogram_percentile_and_streaming():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.0, (300, 200)).astype(np.float32)
    values[0, 0] = np.nan
    whole = value_histogram(lambda: [values])
    blocks = value_histogram(lambda: (values[r, c] for r, c in iter_blocks(values.shape, 64)))
    assert np.array_equal(whole.counts, blocks.counts)
    assert whole.total == values.size - 1
    for q in (50, 99.5, 100):
        exact = np.nanpercentile(values, q)
        assert whole.percentile(q) == pytest.approx(exact, abs=2 * whole.edges[1])
    values[1, 1] = 1e4  # an outlier coarsens [0, max]; the robust histogram stays fine
    robust = robust_histogram(lambda: [values])
    exact = np.nanpercentile(values, 99.5)
    assert robust.percentile(99.5) == pytest.approx(exact, rel=2 / 4096)
    assert robust.total == values.size - 1 and robust.edges[-1] == pytest.approx(1e4)
    with_outlier = slide_scale(robust, threshold="otsu").threshold
    values[1, 1] = values[2, 2]
    without = slide_scale(robust_histogram(lambda: [values]), threshold="otsu").threshold
    assert with_outlier == pytest.approx(without, abs=0.01)
    with pytest.raises(ValueError, match=">= 0"):
        value_histogram(lambda: [np.array([-1.0])])


def test_slide_scale_makes_tiles_of_different_raw_scales_comparable():
    """One scale for the slide: a tile with 10x the evidence stays 10x; an outlier cell cannot
    squash the map (robust maximum); per-tile peak normalisation would make both peak at 1."""
    rng = np.random.default_rng(0)
    weak = rng.random((64, 64)).astype(np.float32) * 0.1
    strong = weak * 10
    slide = np.concatenate([weak, strong], 1)
    slide[5, 70] = 1000.0  # one extreme cell (ink, a fold)
    scale = slide_scale(robust_histogram(lambda: [slide]))
    out = scale.normalise(slide)
    assert scale.scale == pytest.approx(np.percentile(slide, 99.5), rel=1e-3)  # not the outlier
    assert out.max() == 1 and out[5, 70] == 1
    left, right = out[:, :64], out[:, 64:]
    ok = right < 1
    assert np.allclose(right[ok], 10 * left[ok], rtol=1e-4, atol=1e-5)
    assert left.max() < 0.15  # the weak tile stays weak
    assert peak_normalised(weak)[0].max() == 1  # what per-tile normalisation would show
    empty = slide_scale(value_histogram(lambda: [np.zeros((4, 4))]))
    assert empty.scale == 0 and (empty.normalise(np.zeros((4, 4))) == 0).all()


def test_slide_wide_dt_threshold_matches_single_image_rule():
    """Otsu on the slide's histogram = dynamic_threshold on one image (within a bin of 256)."""
    model, _ = _demo_model()
    from histoview.preprocessing.phantom import make_phantom

    rng = np.random.default_rng(2)
    maps = [rng.gamma(2, 1, (64, 64)) * (1 + 3 * (rng.random((64, 64)) > 0.7))]
    for seed, label in enumerate(("invasive", "in_situ")):
        image = make_phantom(label, shape=(128, 128), pixel_size_um=0.5, seed=seed).image
        cam = explain_cnn(model, image, method="gradcam", target_class=1)
        maps.append(cam.values * cam.extra["cam_max"])  # raw, at input resolution
    for raw in maps:
        norm, peak = peak_normalised(raw)
        kept, thr = dynamic_threshold(norm)
        scale = slide_scale(value_histogram(lambda r=raw: [r]), percentile=100, threshold="otsu")
        assert scale.scale == pytest.approx(peak, rel=1e-6)
        assert scale.threshold == pytest.approx(thr, abs=1.0 / 256)
        out = scale.normalise(raw)
        agree = ((out > 0) == (kept > 0)).mean()
        assert agree > 0.98
        assert scale.to_dict()["threshold_raw"] == pytest.approx(scale.threshold * peak)


# -- end to end through the slide engine -------------------------------------------------------
SLIDE_SHAPE = (448, 1024)
#: (label, seed, (row, col, height, width)) of the phantoms on the test slide, 0.5 um/px
SLIDE_PHANTOMS = (("benign", 1, (32, 32, 384, 448)), ("invasive", 2, (32, 544, 384, 448)))


@pytest.fixture(scope="module")
def phantom_slide(tmp_path_factory):
    """A benign and an invasive phantom on glass as a pyramidal TIFF, and the lesion mask."""
    from histoview.io.pyramid import write_pyramidal_tiff
    from histoview.preprocessing.phantom import make_phantom

    image = np.full((*SLIDE_SHAPE, 3), 245, np.uint8)
    lesion = np.zeros(SLIDE_SHAPE, bool)
    for label, seed, (r, c, h, w) in SLIDE_PHANTOMS:
        ph = make_phantom(label, shape=(h, w), pixel_size_um=0.5, seed=seed)
        image[r : r + h, c : c + w] = ph.image
        lesion[r : r + h, c : c + w] = ph.malignant_mask
    path = tmp_path_factory.mktemp("slide") / "phantoms.tif"
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=0.5, min_size=256)
    return path, lesion


def _read_map(path):
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return tf.series[0].asarray()


def _read_maps(outputs):
    """(2, h, w): the map and the tiles' probability (two single-channel OME-TIFFs)."""
    (prob,) = [v for k, v in outputs.items() if k.startswith("map:p-")]
    return np.stack([_read_map(outputs["map"]), _read_map(prob)])


def _cells(mask, factor, shape):
    pad = np.zeros((shape[0] * factor, shape[1] * factor), bool)
    h, w = min(mask.shape[0], pad.shape[0]), min(mask.shape[1], pad.shape[1])
    pad[:h, :w] = mask[:h, :w]
    return pad.reshape(shape[0], factor, shape[1], factor).mean((1, 3)) > 0.5


def _tissue_auc(values, lesion_cells, factor):
    from histoview.training.metrics import roc_auc

    inside = np.zeros(lesion_cells.shape, bool)
    for _, _, (r, c, h, w) in SLIDE_PHANTOMS:
        inside[-(-r // factor) : (r + h) // factor, -(-c // factor) : (c + w) // factor] = True
    return roc_auc(lesion_cells[inside], values[inside])


@pytest.fixture(scope="module")
def gradcam_run(phantom_slide, tmp_path_factory):
    from histoview.explain.slide_run import explain_slide

    path, _ = phantom_slide
    return explain_slide(path, "gradcam", out_dir=tmp_path_factory.mktemp("gradcam"), workers=0)


@pytest.mark.slow
def test_gradcam_on_a_slide_finds_the_lesion_without_seams(phantom_slide, gradcam_run):
    _, lesion = phantom_slide
    summary = gradcam_run.summary
    outputs = gradcam_run.outputs
    # one single-channel OME-TIFF per channel: the map, and beside it the tiles' probability
    assert outputs["map"].name.endswith(".gradcam.ome.tif")
    assert outputs["map:p-malignant"].name.endswith(".gradcam.p-malignant.ome.tif")
    out = _read_maps(outputs)
    factor = summary["map"]["cell_model_px"]
    assert factor == 16 and summary["map_pixel_size_um"] == pytest.approx(8.0)
    assert out.shape == (2, SLIDE_SHAPE[0] // 16, SLIDE_SHAPE[1] // 16)
    assert out.min() >= 0 and out.max() == pytest.approx(1.0)
    assert summary["target_class_name"] == "malignant" and summary["threshold"] is None
    assert summary["seam"]["seam_score"] <= 1.2
    assert summary["tiles_explained"] == summary["tiles_done"] > 10
    cells = _cells(lesion, factor, out.shape[1:])
    assert _tissue_auc(out[0], cells, factor) >= 0.9
    assert _tissue_auc(out[1], cells, factor) > 0.7  # the per-tile probability channel
    assert summary["tile_probability"]["max"] > 0.9


@pytest.mark.slow
def test_dt_gradcam_slide_threshold_after_cancel_and_resume(phantom_slide, gradcam_run, tmp_path):
    """DT Grad-CAM resumed after a cancel: the same slide scale as Grad-CAM, its map Grad-CAM's
    zeroed at and below one slide-wide threshold."""
    from histoview.explain.slide_run import explain_slide

    path, _ = phantom_slide
    polls = iter(range(1000))
    first = explain_slide(
        path,
        "dt-gradcam",
        out_dir=tmp_path,
        workers=0,
        batch_size=8,
        cancel=lambda: next(polls) >= 2,
    )
    assert first.cancelled and not first.outputs
    run = explain_slide(path, "dt-gradcam", out_dir=tmp_path, workers=0, batch_size=8)
    summary, plain = run.summary, gradcam_run.summary
    assert summary["resumed"] and summary["threshold_method"] == "otsu"
    assert summary["scale_raw"] == pytest.approx(plain["scale_raw"], rel=1e-5)
    thr = summary["threshold"]
    assert 0 < thr < 1 and summary["threshold_raw"] == pytest.approx(thr * summary["scale_raw"])
    dt, cam = _read_maps(run.outputs), _read_maps(gradcam_run.outputs)
    assert np.allclose(dt[1], cam[1], atol=1e-5)
    kept = cam[0] > thr
    assert np.allclose(dt[0][kept], cam[0][kept], atol=1e-5) and (dt[0][~kept] == 0).all()
    assert 0.01 < kept.mean() < 0.6


@pytest.mark.slow
def test_rmcg_node_attention_on_a_slide(phantom_slide, tmp_path):
    from histoview.explain.slide_run import explain_slide
    from histoview.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    meta = {"model": "test_rmcg", "classes": ["benign", "malignant"], "pixel_size_um": 0.5}
    ckpt = save_checkpoint(tmp_path / "rmcg.safetensors", create_model("test_rmcg"), meta)
    path, _ = phantom_slide
    run = explain_slide(path, "rmcg", out_dir=tmp_path, checkpoint=ckpt, workers=0)
    summary = run.summary
    out = _read_maps(run.outputs)
    assert summary["map"]["cell_model_px"] == 32 and summary["map"]["tile_cells"] == 3
    assert summary["map"]["overlap_cells"] == 1 and summary["grid"]["overlap"] == 32
    assert out.shape[0] == 2 and 0 <= out.min() and out.max() == pytest.approx(1.0)
    assert summary["map"]["channels"] == ["RMCG node attention", "p(malignant)"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_processor_tiles_go_through_the_checkpoints_input_path(method):
    """With a stain normaliser in the sidecar, each tile is normalised in prepare_tile and its
    map equals the single-image explanation's (InputSpec) before normalising."""
    from histoview.explain.slide_cam_processor import CAMSlideProcessor
    from histoview.explain.slide_processor import SlideContext, TileBox
    from histoview.preprocessing.phantom import make_phantom
    from histoview.preprocessing.stain import StainNormaliser

    model, meta = _demo_model()
    reference = make_phantom("benign", shape=(256, 256), seed=7).image
    meta = {**meta, "stain_normalisation": StainNormaliser("reinhard").fit(reference).to_dict()}
    ctx = SlideContext(pixel_size_um=0.5, options={"tile_size": 256})
    proc = CAMSlideProcessor(method, model, meta, None, ctx)
    assert proc.prepare_tile is not None and proc.factor == 32 and proc.overlap == 64
    image = make_phantom("invasive", shape=(256, 512), seed=8).image
    tiles = np.stack([image[:, :256], image[:, 256:]])
    boxes = [TileBox(i, (0, i), (0, 192 * i), (0, 192 * i, 256, 256)) for i in range(2)]
    results = proc.process(tiles, boxes, [proc.prepare_tile(t) for t in tiles])
    for tile, res in zip(tiles, results):
        alone = explain_cnn(model, tile, method=method, target_class=1, checkpoint_meta=meta)
        raw = torch.from_numpy(res.maps[method][..., 0])[None, None]
        up = F.interpolate(raw, size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
        ref = alone.values * alone.extra["cam_max"]
        assert np.allclose(up.numpy(), ref, rtol=1e-4, atol=1e-6 * max(float(ref.max()), 1e-12))
        p = float(alone.probabilities[1])
        assert np.allclose(res.maps[method][..., 1], p, atol=1e-5)
        assert np.allclose(res.extras["probabilities"], alone.probabilities, atol=1e-5)
        assert res.weights[method].shape == (8, 8)
    plain = CAMSlideProcessor(
        method, model, {k: v for k, v in meta.items() if k != "stain_normalisation"}, None, ctx
    )
    assert plain.prepare_tile is None
    with pytest.raises(ValueError, match="multiple of its 8 map cells"):
        CAMSlideProcessor(method, model, meta, None, SlideContext(0.5, options={"tile_size": 132}))


@pytest.mark.slow
def test_gradcam_on_the_phantom_slide_against_its_lesion_mask(tmp_path):
    """The generator's slide (0.25 um/px, read at the demo weights' 0.5): Grad-CAM's map
    against the ground-truth lesion mask over the tissue, and no seams."""
    from histoview.explain.slide_run import explain_slide
    from histoview.training.metrics import roc_auc

    # the phantom-slide generator (issue 17, item 6) lands beside this work
    phantom_slide = pytest.importorskip("histoview.preprocessing.phantom_slide")
    write_phantom_slide, load_ground_truth = (
        phantom_slide.write_phantom_slide,
        phantom_slide.load_ground_truth,
    )
    slide = write_phantom_slide(tmp_path / "phantom.tif", size=3072, seed=0)
    run = explain_slide(slide.path, "gradcam", out_dir=tmp_path / "out", workers=0)
    summary = run.summary
    values = _read_maps(run.outputs)[0]
    labels = load_ground_truth(slide.path).label_map(summary["map_pixel_size_um"])
    labels = labels[: values.shape[0], : values.shape[1]]
    tissue, lesion = labels >= 1, labels >= 2
    assert lesion.any() and (tissue & ~lesion).any()
    assert roc_auc(lesion[tissue], values[tissue]) >= 0.9
    assert summary["seam"]["seam_score"] <= 1.2
