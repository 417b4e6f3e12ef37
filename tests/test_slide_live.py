"""What the slide dock shows while a run goes: snapshots of the working store, and where the
layers lie on the slide (no display needed)."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.viewer._slide_live import (
    format_progress,
    live_contrast,
    placement,
    read_snapshot,
    tissue_display,
    world_box_to_region,
)


def test_placement_puts_map_pixel_corners_on_slide_pixel_corners():
    # slide: 0.25 um/px, translated; a map pixel covers 8 level-0 pixels from level-0 (100, 40)
    where = placement(8.0, (100.0, 40.0), (0.25, 0.25), (10.0, -5.0))
    assert where["scale"] == (2.0, 2.0)
    # map pixel 0's top-left corner = centre - half a map pixel; slide pixel 100's top-left
    # corner = translate + (100 - 0.5) * scale
    top_left_map = np.array(where["translate"]) - np.array(where["scale"]) / 2
    top_left_slide = np.array([10.0 + 99.5 * 0.25, -5.0 + 39.5 * 0.25])
    np.testing.assert_allclose(top_left_map, top_left_slide)


def test_world_box_round_trips_and_is_cut_to_the_slide():
    scale, translate = (0.5, 0.5), (0.0, 0.0)
    # level-0 pixels 10..30 (rows) x 20..60 (cols): corners at (r - 0.5) * 0.5 in world
    box = ((9.5 * 0.5, 19.5 * 0.5), (29.5 * 0.5, 59.5 * 0.5))
    assert world_box_to_region(box, scale, translate, (100, 100)) == (10, 20, 20, 40)
    cut = world_box_to_region(((-50, -50), (10, 10)), scale, translate, (100, 100))
    assert cut[:2] == (0, 0) and cut[2] == cut[3] == 21
    assert world_box_to_region(((500, 500), (600, 600)), scale, translate, (100, 100)) is None


def test_live_contrast_ignores_missing_and_outliers():
    v = np.full((50, 50), np.nan, np.float32)
    v[:10] = np.linspace(0, 1, 500).reshape(10, 50)
    v[0, 0] = 1e6
    lo, hi = live_contrast(v)
    assert 0 <= lo < 0.05 and 0.9 < hi < 10
    assert live_contrast(np.full((3, 3), np.nan)) == (0.0, 1.0)
    lo, hi = live_contrast(np.full((3, 3), 2.0))
    assert hi > lo


def _store(tmp_path):
    from histoview.explain.slide_grid import make_grid
    from histoview.explain.slide_processor import MapSpec, TileBox, TileResult
    from histoview.explain.slide_store import open_store

    grid = make_grid(
        (0.0, 0.0, 256.0, 256.0), pixel_size_um=0.5, level0_pixel_size_um=0.25, tile_size=64
    )
    spec = MapSpec(name="attention", factor=8)
    store, _ = open_store(
        tmp_path / "s.amil.zarr", grid, settings={"x": 1}, maps=(spec,), extras={}
    )
    return store, grid, TileBox, TileResult


def test_snapshot_shows_only_the_tiles_done(tmp_path):
    pytest.importorskip("zarr")
    store, grid, _, TileResult = _store(tmp_path)
    assert grid.shape == (2, 2)
    box = grid.box(1)  # top-right tile
    store.add_batch([box], [TileResult(maps={"attention": np.full((8, 8), 3.0)})], {}, elapsed_s=1)
    snap = read_snapshot(store.path, progress={"done": 1, "total": 4, "remaining_s": 90})
    assert snap.map_name == "attention" and snap.done == 1 and not snap.finished
    assert snap.values.shape == (16, 16)
    assert np.all(snap.values[:8, 8:] == 3.0)
    assert np.isnan(snap.values[:8, :8]).all() and np.isnan(snap.values[8:]).all()
    assert snap.map_factor == 16.0  # 8 model pixels of 2 level-0 pixels
    assert snap.tiles[0, 1] == 1 and np.isnan(snap.tiles[0, 0])
    assert format_progress(snap, snap.progress) == (
        "tiles 1 / 4 (25 %), about 1 min 30 s left; colours scaled to the tiles done so far, "
        "final when the run ends"  # the live colour scale is not the finished map's
    )
    assert read_snapshot(tmp_path / "nothing.zarr") is None


def test_the_dock_worker_hands_arrays_and_the_first_tile_before_the_rest(tmp_path, monkeypatch):
    """The dock's worker generator (run here in the test's thread, as napari runs it in a
    worker): the tissue mask, a snapshot once the store is open, and one holding the first
    tile's results while the engine still waits before its second batch; every yield is plain
    arrays (nothing the main thread would have to read from disk). On the CPU the engine
    leaves one core to the viewer while it runs, and the thread count is restored after."""
    import dataclasses
    import os
    import threading

    torch = pytest.importorskip("torch")
    from _slides import write_slide
    from histoview.explain.slide_amil import AmilSlideProcessor
    from histoview.viewer._slide_running import slide_work

    monkeypatch.setenv("HISTOVIEW_CACHE_DIR", str(tmp_path / "cache"))  # nothing to replay
    slide = write_slide(tmp_path / "slide.tif")
    go, calls, threads = threading.Event(), [], set()
    original = AmilSlideProcessor.process
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def held(self, tiles, boxes, prepared):  # batches after the first wait for the test
        calls.append(len(boxes))
        threads.add(torch.get_num_threads())
        if len(calls) > 1:
            assert go.wait(60), "the first tile's snapshot never came"
        return original(self, tiles, boxes, prepared)

    monkeypatch.setattr(AmilSlideProcessor, "process", held)
    work = slide_work(
        slide, "amil", None, None, None, "cpu", 16, 0, tmp_path / "out", threading.Event()
    )
    kinds, snaps = [], []
    try:
        while True:
            kind, payload = next(work)
            kinds.append(kind)
            if kind == "tissue":
                mask, factor = payload
                assert isinstance(mask, np.ndarray) and mask.dtype == np.float32
                continue
            snaps.append(payload)
            for f in dataclasses.fields(payload):
                value = getattr(payload, f.name)
                assert not type(value).__module__.startswith("zarr"), f.name
            assert isinstance(payload.values, np.ndarray) and isinstance(payload.tiles, np.ndarray)
            if payload.done:
                go.set()
    except StopIteration as stop:
        result, final = stop.value
    assert kinds[0] == "tissue" and snaps[0].done == 0, "layers can be made before any tile"
    first = next(s for s in snaps if s.done)
    assert first.done == 1 < first.total == 4 and np.isfinite(first.values).any()
    assert calls[0] == 1 and sum(calls) == 4
    assert not result.cancelled and final.finished and final.done == 4
    assert threads == {max(1, min(before, cores - 1))}, "one core left to the viewer"
    assert torch.get_num_threads() == before


def test_tissue_display_outlines_the_tissue_and_leaves_glass_clear():
    """The tissue mask layer: glass 0, the tissue's edge 1 (drawn solid), inside faint."""
    mask = np.zeros((9, 12), bool)
    mask[2:7, 3:10] = True
    shown = tissue_display(mask)
    assert shown.dtype == np.float32 and shown.shape == mask.shape
    assert (shown[~mask] == 0).all()
    edge = mask.copy()
    edge[3:6, 4:9] = False
    assert (shown[edge] == 1).all() and edge.sum() == 2 * 7 + 2 * 3
    assert 0 < shown[4, 6] < 0.5, "inside: a faint fill"
    touching = np.ones((3, 3), bool)  # tissue up to the image border is outlined there too
    assert (tissue_display(touching)[[0, 0, 2, 2], [0, 2, 0, 2]] == 1).all()
    assert tissue_display(touching)[1, 1] < 1


def test_the_tissue_mask_leaves_the_stain_readable():
    """Inside the tissue the mask adds a trace of colour, its outline stays visible: a 0.18
    green fill over the whole tissue made the stain grey."""
    pytest.importorskip("napari")
    from histoview.viewer._slide_live import TISSUE_FILL
    from histoview.viewer.overlays import tissue_colormap

    cmap = tissue_colormap()
    glass, inside, outline = cmap.map(np.array([0.0, TISSUE_FILL, 1.0]))
    assert glass[3] == 0 and inside[3] <= 0.06 and outline[3] >= 0.8
