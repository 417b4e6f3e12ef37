"""The core image API: formats, pyramid levels, pixel size, lazy regions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoview.io import ImageReadError, open_image, to_rgb8, write_pyramidal_tiff


def _rgb(h=64, w=96, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg"])
def test_plain_formats_open_as_rgb(tmp_path, suffix):
    arr = _rgb()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(path, quality=95)
    with open_image(path) as src:
        assert src.shape == (64, 96, 3)
        assert src.is_rgb and src.dtype == np.uint8
        assert src.pixel_size_um is None
        region = src.read_region(0, (10, 20), (5, 7))
    assert region.shape == (5, 7, 3)
    if suffix == ".png":
        np.testing.assert_array_equal(region, arr[10:15, 20:27])


def test_grayscale_rgba_16bit_palette(tmp_path):
    gray = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgba = np.dstack([_rgb(64, 64), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    deep = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    tifffile.imwrite(tmp_path / "d.tif", deep)
    pal = Image.fromarray(gray).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    tifffile.imwrite(
        tmp_path / "p.tif",
        (gray // 16).astype(np.uint8),
        photometric="palette",
        colormap=(np.stack([np.arange(256)] * 3) * 257).astype(np.uint16),
    )

    with open_image(tmp_path / "g.png") as src:
        assert src.shape == (64, 64) and not src.is_rgb
        assert to_rgb8(src.read_level()).shape == (64, 64, 3)
    with open_image(tmp_path / "a.png") as src:
        assert src.shape == (64, 64, 4) and src.is_rgb
        rgb = to_rgb8(src.read_level())
        # alpha 128 composited on white: brighter than the original
        assert rgb.shape == (64, 64, 3) and rgb.mean() > rgba[..., :3].mean()
    with open_image(tmp_path / "d.tif") as src:
        assert src.dtype == np.uint16
        np.testing.assert_array_equal(src.read_level(), deep)
        assert to_rgb8(src.read_level()).dtype == np.uint8
    with open_image(tmp_path / "p.png") as src:
        assert src.shape == (64, 64, 3) and src.dtype == np.uint8
    with open_image(tmp_path / "p.tif") as src:
        assert src.shape == (64, 64, 3) and src.dtype == np.uint8
        out = src.read_region(0, (0, 0), (64, 64))
        np.testing.assert_array_equal(out[..., 0], gray // 16)  # identity palette


def test_pyramidal_tiff_levels_regions_and_pixel_size(tmp_path):
    arr = _rgb(3000, 2200)
    path = tmp_path / "pyr.tif"
    write_pyramidal_tiff(path, arr, tile=256, pixel_size_um=0.25, min_size=500)
    with open_image(path) as src:
        assert src.format == "bigtiff"
        assert [lv.shape[:2] for lv in src.levels] == [(3000, 2200), (1500, 1100), (750, 550)]
        assert src.pixel_size_um == pytest.approx(0.25)
        assert src.pixel_size_source == "file" and src.pixel_size_origin.startswith(
            "TIFF resolution"
        )
        assert src.level_pixel_size(2) == pytest.approx(1.0)
        np.testing.assert_array_equal(
            src.read_region(0, (1000, 700), (50, 60)), arr[1000:1050, 700:760]
        )
        np.testing.assert_array_equal(
            src.read_region(1, (100, 100), (10, 10)), arr[::2, ::2][100:110, 100:110]
        )
        # clipping at the border; reading outside raises
        assert src.read_region(0, (2990, 2190), (50, 50)).shape == (10, 10, 3)
        with pytest.raises(ValueError):
            src.read_region(0, (5000, 0), (10, 10))
        with pytest.raises(IndexError):
            src.read_region(3, (0, 0), (10, 10))
        assert src.best_level_for(1.0) == 2
    with open_image(path, pixel_size_um=0.5) as src:
        assert src.pixel_size_um == 0.5 and src.pixel_size_source == "user"


def test_ome_tiff_pixel_size(tmp_path):
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        path,
        _rgb(),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.42, "PhysicalSizeY": 0.42},
    )
    with open_image(path) as src:
        assert src.format == "ome-tiff"
        assert src.pixel_size_um == pytest.approx(0.42)
        assert src.pixel_size_source == "file" and src.pixel_size_origin.startswith("OME")


def test_large_pyramid_opens_lazily(tmp_path):
    """A 20,000 x 20,000 slide opens and reads a region without loading a level.

    (benchmarks/bench_io.py times the 50,000 x 50,000 case.)"""
    tile = np.full((1024, 1024, 3), (230, 160, 200), np.uint8)
    path = tmp_path / "huge.tif"

    def tile_fn(level, r, c, size):
        return tile

    write_pyramidal_tiff(
        path, shape=(20_000, 20_000), tile_fn=tile_fn, tile=1024, compression="jpeg"
    )
    import tracemalloc

    tracemalloc.start()
    with open_image(path) as src:
        assert src.shape == (20_000, 20_000, 3)
        assert src.n_levels >= 5
        region = src.read_region(0, (13_000, 17_000), (256, 256))
        peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert region.shape == (256, 256, 3)
    assert peak < 50e6  # the full level would be 1.2 GB


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.tif", b"", "empty"),
        (
            "text.tif",
            b"this is not an image, just text renamed to .tif\n" * 4,
            "not a PNG, JPEG or TIFF",
        ),
        ("text.png", b"hello", "not a PNG, JPEG or TIFF"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        open_image(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_truncated_tiff(tmp_path):
    path = tmp_path / "trunc.tif"
    tifffile.imwrite(path, _rgb(512, 512), tile=(128, 128), photometric="rgb")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.tif.*(truncated|cannot)"):
        open_image(path)


def test_header_claiming_huge_image_without_data(tmp_path):
    """A TIFF header claiming 100,000 x 100,000 pixels that holds the data of a 64 x 64 image."""
    path = tmp_path / "fake.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages[0].tags["ImageWidth"].overwrite(100_000)
        tf.pages[0].tags["ImageLength"].overwrite(100_000)
    with pytest.raises(ImageReadError, match="fake.tif.*100000, 100000"):
        open_image(path)


def test_header_claiming_huge_png(tmp_path):
    import struct
    import zlib

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match="huge.png.*too many pixels"):
        open_image(path)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match="one.png.*1 x 1"):
        open_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        open_image(tmp_path)


@pytest.mark.realdata
def test_real_breakhis_and_monuseg(breakhis_dir, monuseg_dir):
    png = sorted(breakhis_dir.glob("*.png"))[0]
    with open_image(png) as src:
        assert src.shape[:2] in ((460, 700), (456, 700)) and src.is_rgb
    tif = sorted((monuseg_dir / "images").glob("*.tif"))[0]
    with open_image(tif, pixel_size_um=0.2456) as src:
        assert src.shape == (1000, 1000, 3)
        assert src.read_region(0, (0, 0), (10, 10)).dtype == np.uint8
