"""Reading at a resolution (issue 17, item 1): ``ImageSource.read_rect`` (contract A).

The pyramids are written by :func:`histoview.io.write_pyramidal_tiff` (each level a 2x
decimation of level 0) or, where the level content matters, by tifffile with 2 x 2 means.
References are computed here from level 0 with an exact area average (fractional weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from histoview.io import ImageReadError, open_image, write_pyramidal_tiff
from histoview.io.resolution import level_scale


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB image with structure at ~20 pixels and no edges (decimation ~ averaging)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((h, w, 3), np.float32)
    for ch in range(3):
        fy, fx, py, px = rng.uniform(0.01, 0.05, 2).tolist() + rng.uniform(0, 6, 2).tolist()
        out[..., ch] = 128 + 60 * np.sin(yy * fy + py) * np.cos(xx * fx + px)
    return np.clip(out, 0, 255).astype(np.uint8)


def _area_weights(n_out: int, start: float, step: float, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights: output pixel i averages input [start + i step, start + (i+1) step)
    by overlap length (inputs outside the image get no weight; the caller pads)."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        a, b = start + i * step, start + (i + 1) * step
        for j in range(max(int(np.floor(a)), 0), min(int(np.ceil(b)), n_in)):
            w[i, j] = max(0.0, min(b, j + 1) - max(a, j))
    return w / step


def _area_reference(img, location, size, factor) -> np.ndarray:
    """Exact area average of ``img`` (level 0) over the output grid of :meth:`read_rect`."""
    r0, c0 = (int(np.floor(v)) for v in location)
    r1, c1 = (int(np.ceil(v + n * factor)) + 1 for v, n in zip(location, size))
    crop = img[r0:r1, c0:c1].astype(np.float64)
    wy = _area_weights(size[0], location[0] - r0, factor, crop.shape[0])
    wx = _area_weights(size[1], location[1] - c0, factor, crop.shape[1])
    return np.einsum("iy,yxc,jx->ijc", wy, crop, wx)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """3000 x 2500 smooth RGB at 0.25 um/px, levels at 0.5, 1 and 2 um/px (decimated)."""
    path = tmp_path_factory.mktemp("rect") / "slide.tif"
    image = _smooth(3000, 2500)
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=0.25, min_size=256)
    return path, image


def _spy_reads(src, monkeypatch) -> list:
    calls = []
    real = src.read_region

    def spy(level, origin, size):
        calls.append((level, tuple(origin), tuple(size)))
        return real(level, origin, size)

    monkeypatch.setattr(src, "read_region", spy)
    return calls


@pytest.mark.parametrize(
    "pixel_size, level", [(0.25, 0), (0.3, 0), (0.5, 1), (0.504, 1), (0.75, 1), (1.0, 2), (9.0, 3)]
)
def test_reads_the_nearest_finer_level(pyramid, pixel_size, level, monkeypatch):
    path, _ = pyramid
    with open_image(path) as src:
        assert [src.level_pixel_size(i) for i in range(src.n_levels)] == [0.25, 0.5, 1.0, 2.0]
        calls = _spy_reads(src, monkeypatch)
        out = src.read_rect((1000, 800), (64, 96), pixel_size)
        assert out.shape == (64, 96, 3) and out.dtype == np.uint8
        assert src.last_level == level == src.level_for_pixel_size(pixel_size)
        # only the level pixels under the rectangle are read (plus the partial ones at its edges)
        (read_level, _, (h, w)), *rest = calls
        assert not rest and read_level == level
        scale = pixel_size / src.level_pixel_size(level)
        assert h <= 64 * scale + 2 and w <= 96 * scale + 2


def test_at_a_levels_own_pixel_size_it_copies_that_levels_pixels(pyramid):
    path, image = pyramid
    with open_image(path) as src:
        out = src.read_rect((1000, 800), (128, 200), 0.5)
        assert np.array_equal(out, image[::2, ::2][500:628, 400:600])
        out = src.read_rect((0, 0), (375, 313), 2.0)
        assert np.array_equal(out, src.read_level(3))


@pytest.mark.parametrize(
    "location, size, pixel_size",
    [((1000, 800), (64, 64), 0.5), ((37.5, 1201.25), (50, 71), 0.6), ((10, 20), (33, 47), 1.37)],
)
def test_matches_an_area_average_of_level_0(tmp_path, location, size, pixel_size):
    """A single-level image: every output is resampled from level 0 alone."""
    image = _smooth(1200, 1600, seed=1)
    path = tmp_path / "flat.tif"
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=0.25, min_size=10_000)
    with open_image(path) as src:
        assert src.n_levels == 1
        out = src.read_rect(location, size, pixel_size)
    assert out.shape == (*size, 3)
    ref = _area_reference(image, location, size, pixel_size / 0.25)
    diff = np.abs(out.astype(np.float64) - ref)
    # Pillow's BOX weights whole source pixels (centre inside the footprint), so non-integer
    # factors differ from the exact area average by a fraction of one pixel's contrast
    assert diff.mean() < 1.5 and diff.max() <= 12


def test_twofold_shrink_is_the_exact_two_by_two_mean(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (512, 640, 3), dtype=np.uint8)  # noise: no smoothness to hide
    path = tmp_path / "noise.tif"
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=0.25, min_size=10_000)
    with open_image(path) as src:
        out = src.read_rect((64, 128), (100, 150), 0.5)
    block = image[64:264, 128:428].astype(np.float64)
    ref = block.reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
    assert np.abs(out - ref).max() <= 1  # Pillow's fixed-point rounding


def test_level_scale_is_a_whole_number_for_ceil_halved_levels(tmp_path):
    path = tmp_path / "odd.tif"
    write_pyramidal_tiff(path, _smooth(2001, 1503), tile=256, pixel_size_um=0.25, min_size=300)
    with open_image(path) as src:
        assert [lv.shape[:2] for lv in src.levels][:3] == [(2001, 1503), (1001, 752), (501, 376)]
        assert [level_scale(src, i) for i in range(3)] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]


def test_parts_outside_the_image_are_padded(pyramid):
    path, image = pyramid
    with open_image(path) as src:
        out = src.read_rect((-20, -30), (60, 80), 0.25)
        assert (out[:20] == 255).all() and (out[:, :30] == 255).all()
        assert np.array_equal(out[20:, 30:], image[:40, :50])
        black = src.read_rect((2990, 2490), (20, 20), 0.25, pad=0)
        assert (black[10:] == 0).all() and (black[:, 10:] == 0).all()
        assert np.array_equal(black[:10, :10], image[2990:, 2490:])
        coloured = src.read_rect((-5, 0), (10, 10), 0.25, pad=(0, 255, 0))
        assert (coloured[:5, :, 0] == 0).all() and (coloured[:5, :, 1] == 255).all()
        assert np.array_equal(coloured[5:], image[:5, :10])


def test_an_output_pixel_across_the_border_mixes_image_and_pad_by_area(tmp_path):
    image = _smooth(300, 300)
    path = tmp_path / "flat.tif"
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=0.25, min_size=10_000)
    with open_image(path) as src:
        out = src.read_rect((-1, 0), (4, 4), 0.5)  # row 0 covers level-0 rows -1 (pad) and 0
    pairs = image[0, :8].astype(float).reshape(4, 2, 3).sum(axis=1)
    assert np.abs(out[0] - (pairs + 2 * 255) / 4).max() <= 1


def test_a_rectangle_wholly_outside_is_a_clear_error(pyramid):
    path, _ = pyramid
    with open_image(path) as src:
        with pytest.raises(ValueError) as err:
            src.read_rect((3000, 0), (16, 16), 0.5)
        msg = str(err.value)
        assert "slide.tif" in msg and "rows 3000..3032" in msg and "3000 x 2500" in msg
        assert "outside" in msg
        with pytest.raises(ValueError, match="outside"):
            src.read_rect((-64, -64), (32, 32), 0.5)  # ends exactly at the corner


def test_finer_than_level_0_is_refused_within_one_percent_allowed(pyramid):
    path, _ = pyramid
    with open_image(path) as src:
        with pytest.raises(ValueError, match=r"finer than the slide's level 0 \(0\.25 um/px\)"):
            src.read_rect((0, 0), (16, 16), 0.2)
        out = src.read_rect((0, 0), (16, 16), 0.2485)  # 0.6 % finer: level 0, bilinear
        assert out.shape == (16, 16, 3) and src.last_level == 0


def test_unknown_pixel_size_is_refused_until_it_is_given(tmp_path):
    path = tmp_path / "nopx.tif"
    write_pyramidal_tiff(path, _smooth(600, 600), tile=256, min_size=10_000)
    with open_image(path) as src:
        assert src.pixel_size_um is None
        with pytest.raises(ImageReadError, match="pixel size unknown") as err:
            src.read_rect((0, 0), (16, 16), 0.5)
        assert "nopx.tif" in str(err.value)
        src.set_pixel_size(0.25)
        assert src.read_rect((0, 0), (16, 16), 0.5).shape == (16, 16, 3)
    with open_image(path, pixel_size_um=0.5) as src:
        assert src.read_rect((0, 0), (16, 16), 1.0).shape == (16, 16, 3)


def test_anisotropic_pixels_are_refused(tmp_path):
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path,
        _smooth(300, 300),
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    with open_image(path) as src:
        with pytest.raises(ImageReadError, match="not square"):
            src.read_rect((0, 0), (16, 16), 1.0)


@pytest.mark.parametrize(
    "bad", [((0, 0), (0, 16)), ((0, 0), (16.5, 16)), ((np.nan, 0), (16, 16)), ((0,), (16, 16))]
)
def test_a_malformed_rectangle_is_a_value_error(pyramid, bad):
    path, _ = pyramid
    with open_image(path) as src, pytest.raises(ValueError):
        src.read_rect(*bad, 0.5)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_non_positive_pixel_size_is_a_value_error(pyramid, bad):
    with open_image(pyramid[0]) as src, pytest.raises(ValueError, match="positive"):
        src.read_rect((0, 0), (16, 16), bad)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:32, :, 3] = 255  # top half opaque red-ish
    rgba[32:, :, 3] = 0  # bottom half transparent: glass
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(
        path, rgba, photometric="rgb", extrasamples=["unassalpha"], resolution=(4e4, 4e4),
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    with open_image(path) as src:
        assert src.shape == (64, 64, 4)
        out = src.read_rect((0, 0), (32, 32), 0.5)
    assert out.shape == (32, 32, 3)
    assert (out[:16] == (200, 0, 0)).all() and (out[16:] == 255).all()


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 1), (np.uint16, 257)])
def test_grey_is_expanded_to_rgb(tmp_path, dtype, scale):
    grey = (_smooth(128, 128)[..., 0].astype(np.uint32) * scale).astype(dtype)
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    with open_image(path) as src:
        out = src.read_rect((0, 0), (64, 64), 0.25)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - grey[:64, :64] / scale).max() <= 1


def test_png_with_a_given_pixel_size(tmp_path):
    from PIL import Image

    image = _smooth(200, 300)
    path = tmp_path / "tile.png"
    Image.fromarray(image).save(path)
    with open_image(path, pixel_size_um=0.25) as src:
        assert src.backend == "pillow"
        out = src.read_rect((0, 0), (100, 150), 0.5)
    ref = image.reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
    assert np.abs(out - ref).max() <= 1  # Pillow's fixed-point rounding


def test_a_corrupt_tile_is_an_image_read_error_and_the_rest_still_reads(tmp_path):
    path = tmp_path / "corrupt.tif"
    write_pyramidal_tiff(path, _smooth(1024, 1024), tile=256, pixel_size_um=0.25, min_size=10_000)
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]  # tile (1, 1)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00garbage!" * (count // 9))
    with open_image(path) as src:
        with pytest.raises(ImageReadError, match="corrupt.tif"):
            src.read_rect((300, 300), (64, 64), 0.25)
        assert src.read_rect((0, 0), (64, 64), 0.25).shape == (64, 64, 3)
