"""Pyramidal OME-TIFF output (histoview.io.ome_tiff): values, pyramid, metadata, memory, atomicity."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import tifffile

import histoview.io.ome_tiff as ome_tiff
from histoview.io import open_image, write_ome_tiff


def _levels(path):
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        return [np.asarray(lv.asarray()) for lv in series.levels], tf


def _mean2(a: np.ndarray) -> np.ndarray:
    """Reference 2 x 2 mean, an odd last row / column averaged over the pixels it has."""
    h, w = a.shape[:2]
    rows, cols = np.arange(0, h, 2), np.arange(0, w, 2)
    sums = np.add.reduceat(np.add.reduceat(a.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.minimum(h - rows, 2), np.minimum(w - cols, 2))
    return sums / counts.reshape(counts.shape + (1,) * (a.ndim - 2))


def test_float_map_round_trip_pyramid_tiles_and_pixel_size(tmp_path):
    a = np.random.default_rng(0).random((1201, 803)).astype(np.float32)
    out = write_ome_tiff(
        tmp_path / "m.ome.tif", a, pixel_size_um=0.5, channel_names=["attention"], tile=128
    )
    assert out == tmp_path / "m.ome.tif"
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(1201, 803), (601, 402), (301, 201), (151, 101)]
        for lv in levels:
            page = lv.keyframe
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (128, 128)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert all(lv.keyframe.subfiletype == 1 for lv in levels[1:])
        assert 'Name="attention"' in tf.ome_metadata and 'PhysicalSizeXUnit="µm"' in tf.ome_metadata
        l0, l1, l2 = (np.asarray(lv.asarray()) for lv in levels[:3])
    np.testing.assert_array_equal(l0, a)  # level 0 exact
    np.testing.assert_allclose(l1, _mean2(a.astype(np.float64)), rtol=1e-6)  # 2 x 2 means
    np.testing.assert_allclose(l2, _mean2(l1.astype(np.float64)), rtol=1e-6)
    # the odd last row and column: means of the pixels they have
    assert l1[-1, -1] == a[-1, -1] and l1[-1, 0] == pytest.approx(a[-1, :2].mean())
    with open_image(out) as src:  # histoview reads it back, pixel size from OME
        assert src.format == "ome-tiff" and src.n_levels == 4
        assert src.pixel_size_um == pytest.approx(0.5)
        assert src.pixel_size_origin.startswith("OME-XML")
        np.testing.assert_array_equal(src.read_region(0, (0, 0), (1201, 803)), a)


def test_uint8_mask_rgb_and_bool(tmp_path):
    rng = np.random.default_rng(1)
    mask = (rng.random((700, 600)) > 0.5).astype(np.uint8) * 255
    out = write_ome_tiff(tmp_path / "mask.ome.tif", mask, pixel_size_um=8.0)
    levels, _ = _levels(out)
    assert levels[0].dtype == np.uint8 and np.array_equal(levels[0], mask)
    np.testing.assert_array_equal(levels[1], np.floor(_mean2(mask) + 0.5).astype(np.uint8))
    with open_image(out) as src:
        assert src.pixel_size_um == pytest.approx(8.0) and not src.is_rgb

    flags = rng.random((300, 300)) > 0.5
    out = write_ome_tiff(tmp_path / "flags.ome.tif", flags, pixel_size_um=8.0)
    levels, _ = _levels(out)
    np.testing.assert_array_equal(levels[0], flags.astype(np.uint8))  # 0/1

    rgb = rng.integers(0, 256, (600, 520, 3), dtype=np.uint8)
    out = write_ome_tiff(tmp_path / "rgb.ome.tif", rgb, pixel_size_um=0.25)
    with open_image(out) as src:
        assert src.is_rgb and src.n_levels == 3 and src.pixel_size_um == pytest.approx(0.25)
        np.testing.assert_array_equal(src.read_region(0, (0, 0), (600, 520)), rgb)
        l1 = src.read_region(1, (0, 0), src.levels[1].shape[:2])
    np.testing.assert_array_equal(l1, np.floor(_mean2(rgb) + 0.5).astype(np.uint8))


def test_channels_metadata_origin_and_nearest_resampling(tmp_path):
    a = np.random.default_rng(2).random((520, 300, 3)).astype(np.float64)  # stored as float32
    out = write_ome_tiff(
        tmp_path / "p.ome.tif",
        a,
        pixel_size_um=16.0,
        channel_names=["benign", "in situ", "invasive"],
        metadata={"method": "gradcam", "classes": ["a", "b"]},
        origin_um=(100.0, 250.5),
    )
    levels, tf = _levels(out)
    assert levels[0].shape == (3, 520, 300) and levels[0].dtype == np.float32
    np.testing.assert_array_equal(levels[0], np.moveaxis(a.astype(np.float32), 2, 0))
    xml = tifffile.TiffFile(out).ome_metadata
    for text in ('Name="in situ"', 'K="method">gradcam<', 'PositionX="250.5"', 'PositionY="100.0"'):
        assert text in xml
    labels = np.random.default_rng(3).integers(0, 4, (600, 500), dtype=np.uint8)
    out = write_ome_tiff(tmp_path / "labels.ome.tif", labels, pixel_size_um=8, resampling="nearest")
    levels, _ = _levels(out)
    np.testing.assert_array_equal(levels[1], labels[::2, ::2])
    with pytest.raises(ValueError, match="channel name"):
        write_ome_tiff(tmp_path / "x.ome.tif", a, pixel_size_um=1, channel_names=["one"])


def test_nan_left_out_of_the_mean_and_coarse_maps_keep_their_pixel_size(tmp_path):
    a = np.ones((600, 600), np.float32)
    a[0, 0] = np.nan
    a[2:4, 2:4] = np.nan
    out = write_ome_tiff(tmp_path / "nan.ome.tif", a, pixel_size_um=112.0)  # one A-MIL patch
    levels, _ = _levels(out)
    assert levels[1][0, 0] == 1.0 and np.isnan(levels[1][1, 1])
    with open_image(out) as src:
        assert src.pixel_size_um == pytest.approx(112.0)


class _Spy:
    """An array-like that records every read, to prove the writer never reads it whole."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        block = self.array[key]
        self.reads.append(block.shape)
        return block


def test_large_zarr_source_is_read_in_blocks_with_bounded_memory(tmp_path, monkeypatch):
    import zarr

    monkeypatch.setattr(ome_tiff, "BLOCK_BYTES", 2**20)
    monkeypatch.setattr(ome_tiff, "LEVEL_IN_MEMORY_BYTES", 2**20)  # lower levels on disk
    shape = (2048, 1536)
    z = zarr.open_array(
        str(tmp_path / "src.zarr"), mode="w", shape=shape, chunks=(512, 512), dtype="f4"
    )
    rng = np.random.default_rng(4)
    for r in range(0, shape[0], 500):
        z[r : r + 500] = rng.random((500, shape[1]), dtype=np.float32)
    spy = _Spy(z)
    tracemalloc.start()
    try:
        out = write_ome_tiff(tmp_path / "big.ome.tif", spy, pixel_size_um=0.5, tile=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full = shape[0] * shape[1] * 4
    assert spy.reads and all(h * w * 4 <= 2**20 for h, w in spy.reads)
    assert sum(h * w for h, w in spy.reads) == shape[0] * shape[1]  # every pixel read once
    assert peak < full / 2, f"peak {peak / 2**20:.1f} MiB for a {full / 2**20:.1f} MiB source"
    levels, _ = _levels(out)
    np.testing.assert_array_equal(levels[0], z[:])
    np.testing.assert_allclose(levels[1], _mean2(z[:]), rtol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # temporary store gone


def test_error_mid_write_leaves_no_file_and_existing_files_are_kept(tmp_path):
    class Failing(_Spy):
        def __getitem__(self, key):
            if len(self.reads) == 3:
                raise RuntimeError("disk went away")
            return super().__getitem__(key)

    a = np.random.default_rng(5).random((2000, 2000)).astype(np.float32)
    with pytest.raises(RuntimeError, match="disk went away"):
        ome_tiff.BLOCK_BYTES, saved = 2**20, ome_tiff.BLOCK_BYTES
        try:
            write_ome_tiff(tmp_path / "m.ome.tif", Failing(a), pixel_size_um=0.5)
        finally:
            ome_tiff.BLOCK_BYTES = saved
    assert os.listdir(tmp_path) == []  # neither the file nor a temporary

    target = tmp_path / "m.ome.tif"
    target.write_bytes(b"the user's file")
    out = write_ome_tiff(target, a[:300, :300], pixel_size_um=0.5)
    assert out == tmp_path / "m-1.ome.tif" and target.read_bytes() == b"the user's file"
    out = write_ome_tiff(target, a[:300, :300], pixel_size_um=0.5, overwrite=True)
    assert out == target and open_image(target).pixel_size_um == pytest.approx(0.5)


def test_bad_arguments_are_refused(tmp_path):
    a = np.zeros((64, 64), np.float32)
    for bad in (0, -1, float("nan"), (1.0, 2.0, 3.0)):
        with pytest.raises(ValueError, match="pixel_size_um"):
            write_ome_tiff(tmp_path / "a.ome.tif", a, pixel_size_um=bad)
    with pytest.raises(TypeError, match="int32"):
        write_ome_tiff(tmp_path / "a.ome.tif", a.astype(np.int32), pixel_size_um=1)
    with pytest.raises(ValueError, match="multiple of 16"):
        write_ome_tiff(tmp_path / "a.ome.tif", a, pixel_size_um=1, tile=100)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        write_ome_tiff(tmp_path / "a.ome.tif", np.zeros((2, 3, 4, 5)), pixel_size_um=1)
    assert os.listdir(tmp_path) == []


@pytest.mark.gui
def test_napari_opens_it_as_a_multiscale_layer_in_micrometres(make_napari_viewer, tmp_path):
    a = np.random.default_rng(6).random((1100, 900)).astype(np.float32)
    out = write_ome_tiff(tmp_path / "slide.amil.ome.tif", a, pixel_size_um=2.0)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(out), plugin="histoview")
    assert layer.multiscale and len(layer.data) == 4
    np.testing.assert_allclose(layer.scale, (2.0, 2.0))
    assert layer.metadata["histoview"]["pixel_size_source"] == "file"


def test_a_map_histoview_wrote_opens_in_its_methods_colours(tmp_path):
    """Opened again, a map drawn as the dock drew it (fading colours over the slide, its
    synthetic-weights tag in the name), not as opaque grey; any other OME-TIFF as before."""
    pytest.importorskip("napari")
    from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE
    from histoview.explain.methods import METHODS
    from histoview.io.ome_tiff import read_map_annotation
    from histoview.viewer._reader import read_images

    values = np.linspace(0, 1e-3, 96 * 80, dtype=np.float32).reshape(96, 80)
    about = {
        "method": "amil",
        "map": "attention",
        "notice": f"{RESEARCH_NOTICE} {SYNTHETIC_NOTICE}",
    }
    written = write_ome_tiff(tmp_path / "s.amil.ome.tif", values, pixel_size_um=14, metadata=about)
    assert read_map_annotation(written) == about
    [(_, kwargs, _)] = read_images(str(written))
    assert kwargs["blending"] == "translucent" and "fading" in kwargs["colormap"].name
    assert kwargs["colormap"].colors[0][3] < 0.1  # the lowest values let the slide show
    assert METHODS["amil"].colormap in kwargs["colormap"].name
    assert kwargs["name"] == "s.amil.ome.tif [synthetic demo weights]"
    plain = write_ome_tiff(tmp_path / "plain.ome.tif", values, pixel_size_um=14)
    assert read_map_annotation(plain) == {}
    [(_, kwargs, _)] = read_images(str(plain))
    assert "colormap" not in kwargs and kwargs["name"] == "plain.ome.tif"
