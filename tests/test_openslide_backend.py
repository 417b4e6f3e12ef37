"""The OpenSlide backend (issue 17, item 1): vendor formats through ``openslide-python`` and the
``openslide-bin`` wheel, behind the same :class:`~histoview.io.ImageSource` as tifffile.

OpenSlide reads generic tiled TIFFs whose levels are a chain of IFDs (not SubIFDs), so the slide
here is written that way with 2 x 2 mean levels; both backends then see the same pyramid and
must give the same pixels. No vendor file is needed: a generic TIFF under a vendor suffix is
routed to OpenSlide by its suffix (OpenSlide itself detects formats by content).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

openslide = pytest.importorskip("openslide")

from histoview.cli import main  # noqa: E402
from histoview.io import ImageReadError, open_image  # noqa: E402
from histoview.io import openslide_source as osrc  # noqa: E402


def _mean2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return (
        a[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8)
    )


def _write_chain(path, image, levels=3, pixel_size_um=0.25, tile=256, unit="CENTIMETER"):
    """A tiled pyramid as an IFD chain (OpenSlide's generic-tiff layout), zlib, mean levels."""
    per_unit = (1e4 if unit == "CENTIMETER" else 25_400.0) / pixel_size_um
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level = image
        for i in range(levels):
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                resolution=(per_unit / 2**i, per_unit / 2**i),
                resolutionunit=unit,
                subfiletype=0 if i == 0 else 1,
            )
            level = _mean2(level)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:1536, 0:2048]
    image = np.stack([(yy * 7 + xx * 3) % 256, (xx * 5) % 256, (yy * 2) % 256], axis=-1)
    image = (image + rng.integers(0, 20, image.shape)).clip(0, 255).astype(np.uint8)
    return _write_chain(tmp_path_factory.mktemp("os") / "chain.tif", image), image


def test_a_generic_tiff_opens_through_openslide_like_through_tifffile(slide):
    path, image = slide
    with open_image(path) as tf_src, open_image(path, backend="openslide") as os_src:
        assert tf_src.backend == "tifffile" and os_src.backend == "openslide"
        assert os_src.format == "generic-tiff"
        assert [lv.shape for lv in os_src.levels] == [lv.shape for lv in tf_src.levels]
        assert os_src.pixel_size_um == tf_src.pixel_size_um == 0.25
        assert "TIFF resolution tags" in os_src.pixel_size_origin
        for level in range(os_src.n_levels):
            a = os_src.read_region(level, (100, 130), (300, 257))
            assert np.array_equal(a, tf_src.read_region(level, (100, 130), (300, 257)))
        assert np.array_equal(os_src.read_region(0, (0, 0), (64, 64)), image[:64, :64])
        for location, size, px in [
            ((200, 300), (128, 128), 0.5),
            ((-40.5, 1990.25), (77, 51), 0.6),
            ((1000, 10), (64, 96), 1.3),
        ]:
            a, b = os_src.read_rect(location, size, px), tf_src.read_rect(location, size, px)
            assert os_src.last_level == tf_src.last_level
            assert np.abs(a.astype(int) - b).max() <= 1


@pytest.mark.parametrize(
    "key",
    [
        (slice(10, 50), slice(20, 90)),
        (slice(None), slice(0, 5)),
        (slice(10, 50, 3), slice(90, 20, -7)),
        (7, slice(3, 9)),
        (slice(3, 9), -1),
        (5, 6),
        (Ellipsis, 0),
        (slice(1, 4), slice(2, 8), slice(0, 2)),
        (slice(60, 60), slice(0, 4)),
        (slice(-20, None), slice(-30, -10)),
    ],
)
def test_an_openslide_level_slices_like_a_numpy_array(slide, key):
    path, _ = slide
    with open_image(path, backend="openslide") as src, open_image(path) as ref:
        level, expected = src.level_array(2), np.asarray(ref.level_array(2))
        assert level.shape == expected.shape and level.dtype == np.uint8 and level.ndim == 3
        assert np.array_equal(level[key], expected[key])


def test_an_openslide_level_index_out_of_bounds_raises(slide):
    with open_image(slide[0], backend="openslide") as src:
        with pytest.raises(IndexError):
            src.level_array(2)[10_000, 0]


def test_vendor_suffixes_go_to_openslide(slide, tmp_path):
    path, _ = slide
    ndpi = shutil.copy(path, tmp_path / "slide.ndpi")
    with open_image(ndpi) as src:
        assert src.backend == "openslide" and src.format == "generic-tiff"


def test_a_broken_vendor_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.mrxs"
    path.write_text("[GENERAL]\nnot really a MIRAX slide\n")
    with pytest.raises(ImageReadError, match="broken.mrxs.*OpenSlide"):
        open_image(path)


def test_a_tiff_tifffile_cannot_read_falls_back_to_openslide(slide, monkeypatch):
    from histoview.io import tiff_source

    def refuse(path, size):
        raise ImageReadError(path, "tifffile refuses it")

    monkeypatch.setattr(tiff_source, "open_tiff", refuse)
    with open_image(slide[0]) as src:
        assert src.backend == "openslide"
    monkeypatch.setattr(osrc, "openslide_detects", lambda path: None)
    with pytest.raises(ImageReadError, match="tifffile refuses it"):
        open_image(slide[0])


def test_tiffs_tifffile_draws_wrongly_go_to_openslide(slide, monkeypatch):
    monkeypatch.setattr(osrc, "openslide_detects", lambda path: "philips")
    with open_image(slide[0]) as src:
        assert src.backend == "openslide"  # Philips' sparse tiles: white glass, not black


def test_the_backend_can_be_forced_and_a_wrong_name_is_refused(slide, monkeypatch):
    monkeypatch.setenv("HISTOVIEW_IMAGE_BACKEND", "openslide")
    with open_image(slide[0]) as src:
        assert src.backend == "openslide"
    with open_image(slide[0], backend="tifffile") as src:
        assert src.backend == "tifffile"
    with pytest.raises(ValueError, match="unknown image backend 'vips'"):
        open_image(slide[0], backend="vips")


def test_screen_resolution_tags_are_no_pixel_size_through_openslide(tmp_path):
    path = tmp_path / "dpi72.tif"
    image = np.full((512, 512, 3), 200, np.uint8)
    _write_chain(path, image, levels=1, pixel_size_um=25_400 / 72, unit="INCH")
    assert openslide.OpenSlide(str(path)).properties["openslide.mpp-x"]  # OpenSlide invents it
    with open_image(path, backend="openslide") as src:
        assert src.pixel_size_um is None and "screen/print default" in src.pixel_size_note


@pytest.mark.parametrize(
    "props, expect, origin",
    [
        ({"openslide.mpp-x": "0.2526", "openslide.mpp-y": "0.2526"}, 0.2526, "OpenSlide mpp"),
        ({"openslide.mpp-x": "0.25"}, 0.25, "OpenSlide mpp"),
        ({"openslide.mpp-x": "500", "openslide.mpp-y": "500"}, None, None),
        ({"openslide.mpp-x": "nonsense"}, None, None),
        ({}, None, None),
    ],
)
def test_openslide_pixel_size_follows_the_trusted_inputs_rules(props, expect, origin):
    cal = osrc.openslide_calibration({**props, "openslide.objective-power": "40"})
    assert cal.objective_power == 40.0
    if expect is None:
        assert cal.yx_um is None and cal.origin is None
    else:
        assert cal.yx_um == (expect, expect) and cal.origin.startswith(origin)
    if props.get("openslide.mpp-x") == "500":
        assert "outside" in cal.note


def test_rgba_from_openslide_is_composited_on_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 100, 200, 128]]], np.uint8)
    out = osrc.composite_on_white(rgba)
    assert out.tolist() == [[[10, 20, 30], [255, 255, 255], [127, 177, 227]]]


def test_a_corrupt_tile_is_an_error_and_openslide_reads_on_afterwards(tmp_path):
    image = np.full((1024, 1024, 3), 180, np.uint8)
    path = _write_chain(tmp_path / "corrupt.tif", image, levels=1)
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xffbroken!!" * (count // 9))
    with open_image(path, backend="openslide") as src:
        with pytest.raises(ImageReadError, match="corrupt.tif"):
            src.read_rect((300, 300), (64, 64), 0.25)
        # OpenSlide refuses every call on a handle after an error; the backend reopens it
        assert (src.read_rect((0, 0), (64, 64), 0.25) == 180).all()
        # the level array napari slices in the viewer names the file too
        with pytest.raises(ImageReadError, match=r"corrupt\.tif: OpenSlide cannot read"):
            np.asarray(src.level_array(0)[300:364, 300:364])


def test_dicom_without_wsidicom_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wsidicom(name, *args, **kwargs):
        if name.startswith("wsidicom"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wsidicom)
    path = tmp_path / "level0.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 256)
    for target in (path, tmp_path):
        with pytest.raises(ImageReadError, match="pip install wsidicom"):
            open_image(target)


def test_the_napari_reader_shows_an_openslide_slide_as_a_multiscale_layer(slide, tmp_path):
    from histoview.viewer._reader import napari_get_reader

    path = shutil.copy(slide[0], tmp_path / "slide.ndpi")
    reader = napari_get_reader(str(path))
    assert reader is not None and napari_get_reader(str(tmp_path / "x.mrxs")) is not None
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["metadata"]["histoview"]["backend"] == "openslide"
    assert kwargs["scale"] == (0.25, 0.25)
    import napari

    layer = napari.layers.Image(data, **kwargs)
    assert layer.level_shapes.tolist() == [[1536, 2048], [768, 1024], [384, 512]]
    assert np.asarray(layer.data[1][10:20, 30:40]).shape == (10, 10, 3)


def test_info_names_the_backend_levels_pixel_sizes_and_objective(slide, capsys):
    path, _ = slide
    assert main(["info", str(path), "--backend", "openslide"]) == 0
    out = capsys.readouterr().out
    assert "backend:     openslide" in out and "format:      generic-tiff" in out
    assert "level 1: 768 x 1024 x 3  (downsample 2, 0.5 um/px)" in out
    assert "level 2: 384 x 512 x 3  (downsample 4, 1 um/px)" in out
    assert "objective:   not stated in the file" in out
    assert "TIFF resolution tags (per centimetre, through OpenSlide)" in out
    assert main(["info", str(path)]) == 0
    assert "backend:     tifffile" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    assert '"backend": "tifffile"' in capsys.readouterr().out


def test_dicom_reads_the_same_through_wsidicom_and_openslide(slide, tmp_path, monkeypatch):
    """Where wsidicom (and wsidicomizer, to write a DICOM WSI) are installed."""
    pytest.importorskip("wsidicom")
    dicomizer = pytest.importorskip("wsidicomizer")
    from wsidicomizer.wsidicomizer import SourceIdentifier

    folder = tmp_path / "dicom"
    folder.mkdir()
    files = dicomizer.WsiDicomizer.convert(
        slide[0],
        folder,
        preferred_source=SourceIdentifier.OPENSLIDE,
        tile_size=256,
        workers=1,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
    )
    with open_image(folder) as a, open_image(min(files), backend="openslide") as b:
        assert (a.backend, a.format, b.format) == ("wsidicom", "dicom", "dicom")
        assert [lv.shape for lv in a.levels] == [lv.shape for lv in b.levels]
        assert a.pixel_size_um == pytest.approx(0.25) and b.pixel_size_um == pytest.approx(0.25)
        for level in range(a.n_levels):  # the same JPEG tiles, decoded by two libraries
            x, y = (
                a.read_region(level, (100, 130), (200, 150)),
                b.read_region(level, (100, 130), (200, 150)),
            )
            assert np.abs(x.astype(int) - y).max() <= 2
        assert (
            np.abs(
                a.read_rect((50, 60), (64, 64), 0.7).astype(int)
                - b.read_rect((50, 60), (64, 64), 0.7)
            ).max()
            <= 2
        )
    import builtins

    real_import = builtins.__import__

    def no_wsidicom(name, *args, **kwargs):
        if name == "wsidicom":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wsidicom)
    with open_image(folder) as src:  # without wsidicom: OpenSlide's DICOM driver
        assert src.backend == "openslide" and src.format == "dicom"
