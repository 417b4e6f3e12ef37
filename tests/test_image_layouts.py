"""Images as they are (issue 15, item 3): colour models, planar samples, orientation, the main
image of a multi-image TIFF and bounded region reads, each file built here with tifffile or
Pillow; the napari reader shows what :func:`open_image` reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from histoview.io import ImageReadError, open_image, tiff_layout
from histoview.viewer._reader import read_images

# Pillow's transposition for each EXIF/TIFF orientation (as in ImageOps.exif_transpose)
PIL_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _rgb(h=48, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _shown(array: np.ndarray, orientation: int) -> np.ndarray:
    """The array as an orientation says it is shown, by Pillow (the reference)."""
    if orientation == 1:
        return array
    return np.asarray(Image.fromarray(array).transpose(PIL_ORIENT[orientation]))


def _layer(path) -> np.ndarray:
    """Level 0 of the napari reader's layer for ``path``, read whole."""
    ((data, kwargs, kind),) = read_images(str(path))
    assert kind == "image"
    return np.asarray(data[0] if kwargs["multiscale"] else data)


def _assert_close(actual, expected, atol):
    """Pixel values within ``atol`` (compared as signed integers, not wrapping uint8)."""
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=0, atol=atol
    )


def _read(path) -> np.ndarray:
    with open_image(path) as src:
        return src.read_level()


# --------------------------------------------------------------------------- colour models
# flat patches of known colour: (C, M, Y, K) -> the RGB it must give
KNOWN_CMYK = [
    ((0, 0, 0, 0), (255, 255, 255)),  # no ink: white
    ((255, 0, 0, 0), (0, 255, 255)),  # cyan
    ((0, 255, 255, 0), (255, 0, 0)),  # magenta + yellow: red
    ((0, 0, 0, 255), (0, 0, 0)),  # black ink
    ((0, 128, 255, 0), (255, 127, 0)),  # orange
    ((0, 0, 0, 128), (127, 127, 127)),  # half black: mid gray
    ((51, 102, 0, 51), (163, 122, 204)),  # 255 (1 - C)(1 - K) etc.
]


def _cmyk_patches(size=16) -> tuple[np.ndarray, np.ndarray]:
    cmyk = np.concatenate([np.full((size, size, 4), c, np.uint8) for c, _ in KNOWN_CMYK], 1)
    rgb = np.concatenate([np.full((size, size, 3), r, np.uint8) for _, r in KNOWN_CMYK], 1)
    return cmyk, rgb


def test_cmyk_tiff_gives_the_known_rgb(tmp_path):
    cmyk, rgb = _cmyk_patches()
    tifffile.imwrite(p := tmp_path / "print.tif", cmyk, photometric="separated")
    with open_image(p) as src:
        assert src.shape == (16, 16 * len(KNOWN_CMYK), 3) and src.dtype == np.uint8
        _assert_close(src.read_level(), rgb, atol=1)
        assert "CMYK" in src.describe()["image_note"]
        # a region of one patch
        region = src.read_region(0, (4, 16 * 2 + 3), (5, 6))
        _assert_close(region, rgb[4:9, 35:41], atol=1)
    np.testing.assert_array_equal(_layer(p), _read(p))


def test_cmyk_tiff_16_bit_and_compressed(tmp_path):
    cmyk, rgb = _cmyk_patches()
    tifffile.imwrite(
        p := tmp_path / "deep.tif",
        cmyk.astype(np.uint16) * 257,
        photometric="separated",
        compression="zlib",
        rowsperstrip=5,
    )
    with open_image(p) as src:
        assert src.dtype == np.uint16 and src.shape[2] == 3
        _assert_close(src.read_level() / 257, rgb, atol=1)


def test_separated_that_is_not_cmyk_is_refused_by_name(tmp_path):
    tifffile.imwrite(
        p := tmp_path / "inks.tif",
        np.zeros((16, 16, 4), np.uint8),
        photometric="separated",
        extratags=[(332, 3, 1, 2, True)],  # InkSet 2: not CMYK
    )
    with pytest.raises(ImageReadError, match="inks.tif: .*SEPARATED.*not CMYK"):
        open_image(p)


def _strip_app14(jpeg: bytes) -> bytes:
    """The JPEG without its Adobe APP14 segment (the marker that says CMYK is inverted)."""
    i = jpeg.index(b"\xff\xee")
    length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
    return jpeg[:i] + jpeg[i + 2 + length :]


def test_cmyk_jpeg_gives_the_known_rgb_with_and_without_adobe_marker(tmp_path):
    cmyk, rgb = _cmyk_patches()
    # Pillow writes Adobe's inverted polarity with an APP14 marker, and reads it back the same way
    Image.fromarray(cmyk, "CMYK").save(p := tmp_path / "adobe.jpg", quality=100)
    assert "adobe" in Image.open(p).info
    with open_image(p) as src:
        assert src.shape == rgb.shape and "CMYK" in src.describe()["image_note"]
        _assert_close(src.read_level()[2:-2, :], rgb[2:-2], atol=6)
    # a plain (not inverted) CMYK JPEG has no APP14 marker: Pillow stores 255 - v, so give it
    # 255 - v to store v, then drop the marker
    Image.fromarray(255 - cmyk, "CMYK").save(q := tmp_path / "tmp.jpg", quality=100)
    (plain := tmp_path / "plain.jpg").write_bytes(_strip_app14(q.read_bytes()))
    assert "adobe" not in Image.open(plain).info
    with open_image(plain) as src:
        _assert_close(src.read_level()[2:-2, :], rgb[2:-2], atol=6)
        assert "without an Adobe marker" in src.describe()["image_note"]
    np.testing.assert_array_equal(_layer(plain), _read(plain))


def test_min_is_white_and_bilevel_tiffs(tmp_path):
    gray = _rgb()[..., 0]
    tifffile.imwrite(p := tmp_path / "miw.tif", 255 - gray, photometric="miniswhite")
    np.testing.assert_array_equal(_read(p), gray)
    tifffile.imwrite(
        q := tmp_path / "miw16.tif",
        (4095 - gray.astype(np.uint16) * 16),
        photometric="miniswhite",
        bitspersample=12,
    )
    np.testing.assert_array_equal(_read(q), gray.astype(np.uint16) * 16)
    ink = gray > 128
    tifffile.imwrite(b := tmp_path / "fax.tif", ink, photometric="miniswhite")
    with open_image(b) as src:
        assert src.dtype == np.uint8
        np.testing.assert_array_equal(src.read_level(), np.where(ink, 0, 255))


def test_uncompressed_ycbcr_tiff_gives_rgb(tmp_path):
    rgb = np.array([200, 100, 50], np.float64)
    y = rgb @ [0.299, 0.587, 0.114]
    ycc = [y, 128 + (rgb[2] - y) / 1.772, 128 + (rgb[0] - y) / 1.402]  # TIFF 6.0 section 21
    tifffile.imwrite(
        p := tmp_path / "ycc.tif",
        np.full((16, 16, 3), np.round(ycc), np.uint8),
        photometric="ycbcr",
        subsampling=(1, 1),
    )
    with open_image(p) as src:
        _assert_close(src.read_level()[0, 0], rgb, atol=2)
    # JPEG-compressed YCbCr is decoded to RGB by the codec
    tifffile.imwrite(
        j := tmp_path / "jpeg.tif",
        np.full((16, 16, 3), rgb, np.uint8),
        photometric="rgb",
        compression="jpeg",
    )
    _assert_close(_read(j)[4, 4], rgb, atol=3)


def test_cielab_tiff_is_refused_naming_file_and_model(tmp_path):
    tifffile.imwrite(
        p := tmp_path / "lab.tif", np.zeros((16, 16, 3), np.uint8), photometric="cielab"
    )
    with pytest.raises(ImageReadError) as err:
        open_image(p)
    assert "lab.tif" in str(err.value) and "CIELAB" in str(err.value)
    assert "\n" not in str(err.value)


def test_extra_samples_alpha_only_when_the_file_says_so(tmp_path):
    rgb = _rgb(16, 16)
    extra = np.dstack([rgb, np.zeros((16, 16, 2), np.uint8)])
    tifffile.imwrite(
        p := tmp_path / "extra.tif",
        extra,
        photometric="rgb",
        extrasamples=["unspecified", "unspecified"],
    )
    with open_image(p) as src:
        assert src.shape == (16, 16, 3)  # zeros are not an alpha that would hide the image
        np.testing.assert_array_equal(src.read_level(), rgb)
    alpha = np.full((16, 16, 1), 128, np.uint8)
    premultiplied = np.round(rgb * (128 / 255)).astype(np.uint8)
    tifffile.imwrite(
        q := tmp_path / "assoc.tif",
        np.dstack([premultiplied, alpha]),
        photometric="rgb",
        extrasamples=["assocalpha"],
    )
    with open_image(q) as src:
        assert src.shape == (16, 16, 4)
        _assert_close(src.read_level()[..., :3], rgb, atol=2)


def test_stack_of_pages_is_refused_clearly(tmp_path):
    tifffile.imwrite(
        p := tmp_path / "stack.tif", np.zeros((5, 16, 16, 3), np.uint8), photometric="rgb"
    )
    with pytest.raises(ImageReadError, match="stack.tif: holds a stack of 5 images"):
        open_image(p)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_planar_rgb_tiff_reads_samples_last(tmp_path, compression):
    rgb = _rgb(50, 70)
    tifffile.imwrite(
        p := tmp_path / "planar.tif",
        np.moveaxis(rgb, 2, 0).copy(),
        photometric="rgb",
        planarconfig="separate",
        rowsperstrip=8,
        compression=compression,
    )
    with open_image(p) as src:
        assert src.shape == (50, 70, 3)
        np.testing.assert_array_equal(src.read_level(), rgb)
        np.testing.assert_array_equal(src.read_region(0, (13, 21), (9, 17)), rgb[13:22, 21:38])
        view = src.level_array(0)
        for key in [(slice(None, None, 3), slice(5, 60, 7)), (7,), (Ellipsis, 1), (-1, -2, 0)]:
            np.testing.assert_array_equal(view[key], rgb[key])
    np.testing.assert_array_equal(_layer(p), rgb)


def test_thumbnail_first_multipage_tiff_gives_the_big_page(tmp_path):
    rgb = _rgb(96, 128)
    with tifffile.TiffWriter(p := tmp_path / "thumb-first.tif") as tw:
        tw.write(rgb[::4, ::4].copy(), photometric="rgb")  # thumbnail
        tw.write(rgb, photometric="rgb")
        tw.write(rgb[:20, :30].copy(), photometric="rgb")  # label
    with open_image(p) as src:
        assert src.shape == (96, 128, 3)
        np.testing.assert_array_equal(src.read_level(), rgb)
        note = src.describe()["image_note"]
    assert "3 images" in note and "series 1 (page 1, 96 x 128) is analysed" in note
    assert "24 x 32" in note and "20 x 30" in note
    np.testing.assert_array_equal(_layer(p), rgb)


def test_svs_like_pyramid_after_thumbnail_keeps_its_levels(tmp_path):
    rgb = _rgb(2048, 1536)
    p = tmp_path / "slide.tif"
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(rgb[::16, ::16].copy(), photometric="rgb")  # thumbnail first
    with tifffile.TiffWriter(p, bigtiff=True, append=True) as tw:
        tw.write(rgb, photometric="rgb", tile=(256, 256), subifds=1)
        tw.write(rgb[::2, ::2].copy(), photometric="rgb", tile=(256, 256), subfiletype=1)
    with open_image(p) as src:
        assert [lv.shape for lv in src.levels] == [(2048, 1536, 3), (1024, 768, 3)]
        np.testing.assert_array_equal(
            src.read_region(1, (100, 200), (30, 40)), rgb[::2, ::2][100:130, 200:240]
        )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_tag_is_applied(tmp_path, orientation):
    rgb = _rgb(30, 44)
    tifffile.imwrite(
        p := tmp_path / f"o{orientation}.tif",
        rgb,
        photometric="rgb",
        extratags=[(274, 3, 1, orientation, True)],
        resolution=(1e4 / 0.25, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    want = _shown(rgb, orientation)
    with open_image(p) as src:
        assert src.shape == want.shape
        np.testing.assert_array_equal(src.read_level(), want)
        np.testing.assert_array_equal(src.read_region(0, (3, 5), (11, 13)), want[3:14, 5:18])
        view = src.level_array(0)
        for key in [(slice(None, None, -3), slice(2, None, 5)), (slice(20, 2, -2), -4)]:
            np.testing.assert_array_equal(view[key], want[key])
        # stored: 0.5 um/px rows, 0.25 um/px columns; turned by 90 degrees they swap
        turned = orientation >= 5
        assert src.pixel_size_yx == ((0.25, 0.5) if turned else (0.5, 0.25))
        if orientation != 1:
            assert f"Orientation {orientation} applied" in src.describe()["image_note"]
    np.testing.assert_array_equal(_layer(p), want)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path, orientation, fmt):
    rgb = _rgb(96, 128)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"phone.{fmt.lower()}"
    im.save(p, format=fmt, exif=exif, quality=95)
    with Image.open(p) as ref:
        want = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    with open_image(p) as src:
        assert src.shape == ((128, 96, 3) if orientation in (6, 8) else (96, 128, 3))
        np.testing.assert_array_equal(src.read_level(), want)
        assert f"EXIF orientation {orientation} applied" in src.describe()["image_note"]
    if fmt == "PNG":
        np.testing.assert_array_equal(want, _shown(rgb, orientation))
    np.testing.assert_array_equal(_layer(p), want)


# --------------------------------------------------------------------------- memory
PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from histoview.io import open_image
    from histoview.viewer._reader import read_images

    def peak_mb():
        # Linux folds the parent's peak into a child's ru_maxrss across fork and exec (a pytest
        # process with torch loaded is ~1 GB), so read this process's own high-water mark
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with open_image(sys.argv[1]) as src:
        start = peak_mb()
        region = src.read_region(0, (10_000, 15_000), (16, 16))
        assert (region == 77).all(), region
    opened = peak_mb()
    (data, kwargs, _), = read_images(sys.argv[1])
    crop = np.asarray(data[0][10_000:10_016, 15_000:15_016])
    assert (crop == 77).all()
    print(start, opened, peak_mb())
    """
)


@pytest.mark.slow
def test_single_strip_20k_tiff_region_read_is_bounded_in_memory(tmp_path):
    """A 16 x 16 region of a 20,000 x 20,000 RGB TIFF stored as one uncompressed strip
    (1.2 GB of pixels; the file is sparse, so this is fast) reads in a few MB, not the 1.2 GB
    of decoding the strip; the napari reader's lazy layer likewise."""
    p = tmp_path / "one-strip.tif"
    mm = tifffile.memmap(
        p, shape=(20_000, 20_000, 3), dtype=np.uint8, photometric="rgb", rowsperstrip=20_000
    )
    mm[10_000:10_016, 15_000:15_016] = 77
    mm.flush()
    del mm
    with tifffile.TiffFile(p) as tf:
        assert len(tf.pages[0].dataoffsets) == 1  # really one strip
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(p)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    start, opened, after_reader = (float(v) for v in out.stdout.split())
    assert opened - start < 50, f"region read raised the peak from {start} to {opened} MB"
    assert after_reader < 400, f"the reader's crop peaked at {after_reader} MB"


def test_huge_compressed_strips_are_refused_with_how_to_convert(tmp_path, monkeypatch):
    """Compressed strips decode whole; above the limit (lowered here to keep the file small)
    the level is refused, naming the file and the conversion, when its pixels are wanted."""
    monkeypatch.setattr(tiff_layout, "MAX_CHUNK_BYTES", 100_000)
    tifffile.imwrite(
        p := tmp_path / "one-zlib-strip.tif",
        _rgb(300, 400),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=300,
    )
    with open_image(p) as src:
        assert src.describe()["levels"][0]["shape"] == [300, 400, 3]  # info still works
        with pytest.raises(ImageReadError) as err:
            src.read_region(0, (0, 0), (16, 16))
    message = str(err.value)
    assert message.startswith(str(p)) and "vips tiffsave" in message and "--tile" in message
    assert message.count(str(p)) == 1
    with pytest.raises(ImageReadError, match="one-zlib-strip.tif: stored as 1 compressed strip"):
        read_images(str(p))
    # the same layout in strips of 8 rows reads fine
    tifffile.imwrite(
        q := tmp_path / "strips.tif",
        _rgb(300, 400),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=8,
    )
    np.testing.assert_array_equal(_read(q), _rgb(300, 400))


def test_big_endian_uncompressed_tiff_is_memory_mapped_with_native_values(tmp_path):
    deep = (np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * 29).astype(np.uint16)
    tifffile.imwrite(p := tmp_path / "motorola.tif", deep, byteorder=">")
    with open_image(p) as src:
        region = src.read_region(0, (5, 7), (10, 20))
    assert region.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(region, deep[5:15, 7:27])


# --------------------------------------------------------------------------- the viewer
@pytest.mark.gui
def test_napari_shows_the_converted_turned_main_image(make_napari_viewer, tmp_path):
    rgb = _rgb(40, 60)
    cmyk, cmyk_rgb = _cmyk_patches()
    tifffile.imwrite(c := tmp_path / "cmyk.tif", cmyk, photometric="separated")
    tifffile.imwrite(
        pl := tmp_path / "planar.tif",
        np.moveaxis(rgb, 2, 0).copy(),
        photometric="rgb",
        planarconfig="separate",
    )
    tifffile.imwrite(
        o := tmp_path / "turned.tif", rgb, photometric="rgb", extratags=[(274, 3, 1, 6, True)]
    )
    with tifffile.TiffWriter(t := tmp_path / "thumb-first.tif") as tw:
        tw.write(rgb[::4, ::4].copy(), photometric="rgb")
        tw.write(rgb, photometric="rgb")
    viewer = make_napari_viewer()
    for path, want in [(c, cmyk_rgb), (pl, rgb), (o, _shown(rgb, 6)), (t, rgb)]:
        [layer] = viewer.open(str(path), plugin="histoview")
        assert layer.rgb and layer.data.shape == want.shape, path.name
        _assert_close(np.asarray(layer.data), want, atol=1)
        viewer.layers.clear()


def test_aperio_svs_reads_the_baseline_pyramid_not_thumbnail_label_or_macro(tmp_path):
    rgb = _rgb(2048, 1536)
    aperio = "Aperio Image Library v12.0.5\r\n1536x2048 [0,0 1536x2048] (256x256) |AppMag = 40"
    p = tmp_path / "slide.svs"
    with tifffile.TiffWriter(p) as tw:
        common = dict(photometric="rgb", metadata=None)
        tw.write(rgb, tile=(256, 256), description=aperio + "|MPP = 0.25", **common)
        tw.write(rgb[::8, ::8].copy(), description=aperio + " -> 192x256", **common)
        tw.write(rgb[::4, ::4].copy(), tile=(256, 256), description=aperio, **common)
        tw.write(rgb[:300, :600].copy(), subfiletype=1, description=aperio + "\r\nlabel", **common)
        tw.write(rgb[:400, :1000].copy(), subfiletype=9, description=aperio + "\r\nmacro", **common)
    with tifffile.TiffFile(p) as tf:
        assert [s.name for s in tf.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
    with open_image(p) as src:
        assert [lv.shape for lv in src.levels] == [(2048, 1536, 3), (512, 384, 3)]
        assert src.pixel_size_um == 0.25 and src.format == "svs"
        np.testing.assert_array_equal(
            src.read_region(1, (50, 60), (20, 30)), rgb[::4, ::4][50:70, 60:90]
        )
        note = src.describe()["image_note"]
    assert "'Baseline'" in note and "'Thumbnail'" in note and "'Label'" in note
