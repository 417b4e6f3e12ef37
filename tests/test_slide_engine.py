"""The slide engine: grid and regions, background tiles never read, resume after a cancel or a
kill, corrupt tiles skipped and listed, results independent of the loader's workers, bad input,
and ``histoview explain`` on a small pyramidal slide (histoview.explain.slide_*)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from _slides import GLASS, PHANTOMS, SHAPE, corrupt_tile, write_slide  # noqa: E402
from histoview.explain.slide_amil import AmilSlideProcessor  # noqa: E402
from histoview.explain.slide_grid import (  # noqa: E402
    RegionError,
    clip_region,
    make_grid,
    parse_region,
)
from histoview.explain.slide_run import explain_slide as _explain_slide  # noqa: E402


def explain_slide(*args, **kwargs):
    """The engine's tests run the engine: no replay from the feature cache (a second run of the
    same slide would replay the first run's embeddings; tests/test_feature_cache.py covers it)."""
    kwargs.setdefault("feature_cache", "off")
    return _explain_slide(*args, **kwargs)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("engine-slide") / "slide.tif")


def _final_map(res):
    return np.asarray(res.store.final("attention")[:])


def test_regions_parse_and_clip():
    assert parse_region("10,20,30,40", level0_pixel_size_um=0.5) == (20, 10, 40, 30)
    assert parse_region("10,20,30,40um", level0_pixel_size_um=0.5) == (40, 20, 80, 60)
    assert parse_region(" 1, 2, 3, 4 um", level0_pixel_size_um=0.25) == (8, 4, 16, 12)
    for bad in ("1,2,3", "a,b,c,d", "0,0,-5,5", "0,0,5,0"):
        with pytest.raises(RegionError, match="s.tif: region"):
            parse_region(bad, level0_pixel_size_um=0.5, path="s.tif")
    with pytest.raises(RegionError, match="pixel size is unknown"):
        parse_region("1,2,3,4um", level0_pixel_size_um=None, path="s.tif")
    assert clip_region((-10, 5, 100, 2000), (50, 60)) == (0, 5, 50, 55)
    with pytest.raises(RegionError, match=r"s.tif: region .* lies outside the slide \(60 x 50"):
        clip_region((60, 0, 10, 10), (50, 60), path="s.tif")


def test_grid_geometry_and_tissue():
    class Half:  # tissue in the left half of a 1000 x 1000 level 0
        def fraction(self, r, c, h, w):
            return float(np.clip((500 - c) / w, 0, 1))

    grid = make_grid(
        (0, 0, 1000, 1000),
        pixel_size_um=0.5,
        level0_pixel_size_um=0.25,
        tile_size=112,
        overlap=12,
        tissue=Half(),
    )
    assert grid.frame_shape == (500, 500) and grid.stride == 100
    assert grid.shape == (5, 5)  # 5 tiles of 112 with stride 100 cover 500 pixels
    assert grid.map_shape(28) == (18, 18)
    box = grid.box(7)
    assert box.grid_rc == (1, 2) and box.frame_rc == (100, 200)
    assert box.level0 == (200.0, 400.0, 224.0, 224.0)
    assert grid.tissue[:, :3].all() and not grid.tissue[:, 3:].any()


def test_background_tiles_never_reach_the_model(slide, tmp_path, monkeypatch):
    from histoview.io import open_image
    from histoview.preprocessing.tissue import detect_tissue

    seen = []
    original = AmilSlideProcessor.process

    def spy(self, tiles, boxes, prepared):
        seen.extend(boxes)
        assert (tiles != GLASS).any(axis=(1, 2, 3)).all()
        return original(self, tiles, boxes, prepared)

    monkeypatch.setattr(AmilSlideProcessor, "process", spy)
    res = explain_slide(slide, "amil", out_dir=tmp_path, workers=0, keep_store=True)
    grid = res.store.grid
    assert grid.shape == (2, 3)
    # tile (0, 2) and (1, 0) lie on glass only (tests/_slides.py PHANTOMS)
    assert sorted(b.grid_rc for b in seen) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert res.summary["tiles_total"] == 4 and res.summary["tiles_done"] == 4
    with open_image(slide) as src:
        mask = detect_tissue(src)
    for i in range(grid.n_tiles):
        if i not in {b.index for b in seen}:
            assert mask.fraction(*grid.box(i).level0) < 0.02


def test_resume_after_cancel_does_only_the_rest_and_gives_the_same_map(
    slide, tmp_path, monkeypatch
):
    whole = explain_slide(
        slide, "amil", out_dir=tmp_path / "a", workers=0, batch_size=1, keep_store=True
    )
    events = []
    res = explain_slide(
        slide,
        "amil",
        out_dir=tmp_path / "b",
        workers=0,
        batch_size=1,
        progress=events.append,
        cancel=lambda: len(events) >= 2,
    )
    assert res.cancelled and res.outputs == {} and res.store_path.exists()
    assert [e["done"] for e in events] == [1, 2]
    assert set(events[0]) >= {"done", "total", "skipped", "elapsed_s", "remaining_s", "tile_box"}
    assert events[-1]["total"] == 4 and events[-1]["remaining_s"] > 0
    assert not list((tmp_path / "b").glob("*.json"))  # nothing written but the store

    seen = []
    original = AmilSlideProcessor.process
    monkeypatch.setattr(
        AmilSlideProcessor,
        "process",
        lambda self, t, b, p: (seen.extend(x.index for x in b), original(self, t, b, p))[1],
    )
    again = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=0, batch_size=1, keep_store=True
    )
    assert again.summary["resumed"] and again.summary["tiles_this_run"] == 2 and len(seen) == 2
    np.testing.assert_array_equal(_final_map(again), _final_map(whole))
    assert again.summary["probabilities"] == pytest.approx(whole.summary["probabilities"])
    # other settings: the store is not resumed but made afresh
    seen.clear()
    other = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=0, keep_store=True, min_tissue=0.05
    )
    assert not other.summary["resumed"] and len(seen) == other.summary["tiles_done"]


def test_a_run_killed_mid_batch_counts_each_tile_once(slide, tmp_path, monkeypatch):
    from histoview.explain.slide_store import SlideStore

    whole = explain_slide(
        slide, "amil", out_dir=tmp_path / "a", workers=0, batch_size=2, keep_store=True
    )
    calls = []
    original = SlideStore.extras

    def killed(self, name):  # extras are written after the maps are added, before "done"
        calls.append(name)
        if len(calls) == 5:  # the second batch
            raise KeyboardInterrupt
        return original(self, name)

    monkeypatch.setattr(SlideStore, "extras", killed)
    with pytest.raises(KeyboardInterrupt):
        explain_slide(slide, "amil", out_dir=tmp_path / "b", workers=0, batch_size=2)
    monkeypatch.setattr(SlideStore, "extras", original)
    store_dir = tmp_path / "b" / "slide.amil.zarr"
    assert (store_dir / "undo.npz").exists()
    again = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=0, batch_size=2, keep_store=True
    )
    # batches of 1 tile (the engine's first, FIRST_BATCHES) then 2: killed in the second, the
    # one tile of the first is done, the three others are done again, none twice
    assert again.summary["resumed"] and again.summary["tiles_this_run"] == 3
    np.testing.assert_allclose(_final_map(again), _final_map(whole), rtol=1e-5)


def test_a_corrupt_tile_is_skipped_and_listed(slide, tmp_path):
    r, c = PHANTOMS["invasive"][:2]
    bad = corrupt_tile(slide, tmp_path / "bad.tif", r + 100, c + 100)  # tiles (1, 1) and (1, 2)
    res = explain_slide(bad, "amil", out_dir=tmp_path, workers=0)
    s = res.summary
    assert s["tiles_skipped"] == 2 and s["tiles_done"] == 2 and s["tiles_total"] == 4
    assert {t["index"] for t in s["skipped_tiles"]} == {4, 5}
    assert all("bad.tif" in t["reason"] and "decode" in t["reason"] for t in s["skipped_tiles"])
    record = json.loads(res.outputs["json"].read_text())
    assert record["skipped_tiles"][0]["level0_box"] == [448.0, 448.0, 448.0, 448.0]


def test_workers_do_not_change_the_result(slide, tmp_path):
    a = explain_slide(
        slide, "amil", out_dir=tmp_path / "a", workers=0, batch_size=2, keep_store=True
    )
    b = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=2, batch_size=2, keep_store=True
    )
    np.testing.assert_array_equal(_final_map(a), _final_map(b))
    assert a.summary["probabilities"] == b.summary["probabilities"]


def test_the_first_results_reach_the_store_after_one_tile(slide, tmp_path, monkeypatch):
    from histoview.explain.slide_engine import first_batches

    assert first_batches(16, 100) == [1, 2, 4]
    assert first_batches(16, 2) == [1, 1]
    assert first_batches(4, 100) == [1, 2] and first_batches(1, 100) == []
    sizes = []
    original = AmilSlideProcessor.process

    def spy(self, tiles, boxes, prepared):
        sizes.append(len(boxes))
        return original(self, tiles, boxes, prepared)

    monkeypatch.setattr(AmilSlideProcessor, "process", spy)
    events = []
    ramped = explain_slide(
        slide,
        "amil",
        out_dir=tmp_path / "a",
        workers=1,
        batch_size=2,
        progress=events.append,
        keep_store=True,
    )
    # one tile in the run's thread, then the loader's worker with batches of 2
    assert sizes == [1, 2, 1] and [e["done"] for e in events] == [1, 3, 4]
    sizes.clear()
    single = explain_slide(
        slide, "amil", out_dir=tmp_path / "b", workers=0, batch_size=1, keep_store=True
    )
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_allclose(_final_map(ramped), _final_map(single), rtol=1e-5)
    assert ramped.summary["probabilities"] == pytest.approx(single.summary["probabilities"])


def test_bad_input_is_one_clear_error(slide, tmp_path):
    from histoview.models.inputs import PixelSizeError
    from histoview.preprocessing.tissue import NoTissueError

    with pytest.raises(RegionError, match="slide.tif: region .* lies outside the slide"):
        explain_slide(slide, "amil", out_dir=tmp_path, region="5000,0,100,100")
    with pytest.raises(ValueError, match=r"slide.tif: the model's pixel size 0.5 um/px is finer"):
        explain_slide(slide, "amil", out_dir=tmp_path, pixel_size_um=1.0)
    with pytest.raises(NoTissueError, match="slide.tif: no tissue in the region"):
        explain_slide(slide, "amil", out_dir=tmp_path, region="1000,0,300,300")  # glass only
    glass = write_slide(tmp_path / "glass.tif", np.full((*SHAPE, 3), GLASS, np.uint8))
    with pytest.raises(NoTissueError, match="glass.tif"):
        explain_slide(glass, "amil", out_dir=tmp_path)
    uncalibrated = write_slide(
        tmp_path / "nocal.tif", np.full((*SHAPE, 3), GLASS, np.uint8), pixel_size_um=None
    )
    with pytest.raises(PixelSizeError, match="nocal.tif: .*--pixel-size"):
        explain_slide(uncalibrated, "amil", out_dir=tmp_path)
    assert not list(tmp_path.glob("*.zarr"))


def test_a_method_without_a_slide_processor_is_refused(slide, tmp_path, monkeypatch):
    from dataclasses import replace

    from histoview.explain.methods import METHODS

    monkeypatch.setitem(METHODS, "amil", replace(METHODS["amil"], slide=None))
    with pytest.raises(ValueError, match="method 'amil' does not run on whole slides"):
        explain_slide(slide, "amil", out_dir=tmp_path)


def test_cli_explains_a_slide_tile_by_tile(slide, tmp_path, capsys):
    from histoview.cli import main

    out = tmp_path / "out"
    argv = ["explain", str(slide), "--method", "amil", "--out", str(out), "--workers", "0"]
    assert main([*argv, "--whole-slide", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "amil: tiles 4/4 (0 skipped)" in text and "slide prediction malignant" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "slide.amil.json",
        "slide.amil.ome.tif",
        "slide.tissue.ome.tif",
    ]
    assert main([*argv, "--region", "0,0,100,100", "--whole-slide"]) == 0
    # a region's files are named after it; the whole slide's are left as they were
    assert (out / "slide.region-x0-y0-100x100.amil.json").exists()
    assert not (out / "slide-1.tissue.ome.tif").exists()  # the slide's mask is there already
    assert not (out / "slide-1.amil.json").exists()
    assert main([*argv, "--region", "9000,0,100,100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slide.tif: region" in err and "outside the slide" in err


def test_the_cli_picks_the_slide_engine_only_for_what_does_not_fit(slide, tmp_path):
    from histoview.explain.slide_run import fits_in_one_piece, needs_slide_engine
    from histoview.io import open_image

    with open_image(slide) as src:
        assert fits_in_one_piece(src, 0.5)
        assert not fits_in_one_piece(src, 0.5, limit=896 * 1344 - 1)
        assert fits_in_one_piece(src, 1.0, limit=448 * 672)  # level 1 is at 1 um/px
        assert not fits_in_one_piece(src, 0.5, region=(0, 0, 896, 1344), limit=1000)
    assert not needs_slide_engine(slide, ["amil"])
    uncalibrated = write_slide(tmp_path / "nocal.tif", pixel_size_um=None)
    with open_image(uncalibrated) as src:
        assert fits_in_one_piece(src, 0.5) and not fits_in_one_piece(src, 0.5, limit=1000)
