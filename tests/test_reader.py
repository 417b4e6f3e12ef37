"""The napari reader contribution: formats, multiscale, scale, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoview.io import ImageReadError, write_pyramidal_tiff
from histoview.viewer._reader import napari_get_reader


def test_get_reader_accepts_listed_formats_and_declines_others(tmp_path):
    for name in ("a.png", "b.jpg", "c.jpeg", "d.tif", "e.tiff", "F.TIF"):
        assert callable(napari_get_reader(str(tmp_path / name)))
    assert napari_get_reader([str(tmp_path / "a.png"), str(tmp_path / "b.tif")]) is not None
    for other in ("x.csv", "y.nd2", "", 42, None, ["a.png", "b.csv"]):
        assert napari_get_reader(other) is None


def test_pyramid_reads_as_lazy_multiscale_with_scale(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (2400, 1800, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, arr, tile=256, pixel_size_um=0.5, min_size=400)
    [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [d.shape for d in data] == [(2400, 1800, 3), (1200, 900, 3), (600, 450, 3)]
    assert not isinstance(data[0], np.ndarray)  # lazy
    assert kwargs["scale"] == (0.5, 0.5)
    assert kwargs["metadata"]["histoview"]["pixel_size_um"] == 0.5


def test_16bit_gets_contrast_limits(tmp_path):
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, (np.arange(128 * 128).reshape(128, 128) % 4000).astype(np.uint16))
    [(data, kwargs, _)] = napari_get_reader(str(path))(str(path))
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < hi <= 4000 and not kwargs["rgb"]


def test_bad_file_raises_naming_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_text("not a tiff")
    reader = napari_get_reader(str(path))
    with pytest.raises(ImageReadError, match="broken.tif"):
        reader(str(path))


@pytest.mark.gui
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".tif", ".tiff"])
def test_napari_open_uses_histoview(make_napari_viewer, tmp_path, suffix):
    viewer = make_napari_viewer()
    arr = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / f"tissue{suffix}"
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(
            path,
            arr,
            photometric="rgb",
            resolution=(1e4 / 0.25, 1e4 / 0.25),
            resolutionunit="CENTIMETER",
        )
    else:
        Image.fromarray(arr).save(path, quality=95)
    layers = viewer.open(str(path), plugin="histoview")
    assert len(layers) == 1 and layers[0].rgb
    assert layers[0].data.shape == (300, 400, 3)
    if suffix in (".tif", ".tiff"):
        np.testing.assert_allclose(layers[0].scale, (0.25, 0.25))
        assert layers[0].metadata["histoview"]["pixel_size_source"] == "file"


@pytest.mark.gui
def test_napari_survives_a_bad_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(Exception, match="empty.png"):
        viewer.open(str(path), plugin="histoview")
    # the viewer is still usable afterwards
    viewer.add_image(np.zeros((10, 10)))
    assert len(viewer.layers) == 1


@pytest.mark.gui
def test_multiscale_layer_in_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    arr = np.random.default_rng(2).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    path = tmp_path / "pyr.tif"
    write_pyramidal_tiff(path, arr, tile=256, pixel_size_um=0.5, min_size=500)
    [layer] = viewer.open(str(path), plugin="histoview")
    assert layer.multiscale and len(layer.data) == 3
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
