"""Tissue detection (histoview.preprocessing.tissue): areas, clean-up, artefacts, slides, fractions."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile

from histoview.io import ImageReadError, open_image, write_pyramidal_tiff
from histoview.preprocessing.tissue import (
    NoTissueError,
    TissueMask,
    detect_tissue,
    tissue_mask_from_rgb,
)

PINK, PURPLE, GLASS = (220, 150, 190), (150, 100, 170), 238


def _islands(shape, discs, *, seed=0, noise=8.0):
    """Pink/purple discs (cy, cx, r in pixels) on glass with Gaussian noise: (rgb, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, bool)
    for cy, cx, r in discs:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.full((*shape, 3), float(GLASS))
    tissue = np.where(rng.random((*shape, 1)) < 0.3, PURPLE, PINK)
    img[truth] = tissue[truth]
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


DISCS = [(150, 200, 80), (400, 550, 120), (450, 150, 60)]


@pytest.mark.parametrize("method", ["otsu", "od"])
def test_mask_area_matches_the_islands(method):
    rgb, truth = _islands((600, 800), DISCS)
    tm = tissue_mask_from_rgb(rgb, 8.0, method=method)
    assert tm.mask.shape == truth.shape and tm.method == method
    assert tm.area_um2() == pytest.approx(truth.sum() * 64.0, rel=0.03)
    assert (tm.mask != truth).mean() < 0.01
    assert tm.level0_shape == (600, 800) and tm.level0_pixel_size_um == 8.0


def test_min_area_removes_specks_and_keeps_fragments():
    rgb, truth = _islands((400, 400), [(200, 200, 70)])
    for y, x, side in [(20, 20, 3), (20, 300, 10), (350, 30, 3), (340, 330, 20)]:
        rgb[y : y + side, x : x + side] = PINK  # 576, 6,400, 576 and 25,600 um^2 at 8 um/px
    tm = tissue_mask_from_rgb(rgb, 8.0)
    assert not tm.mask[:40, :40].any() and not tm.mask[:40, 290:].any()  # specks gone
    assert tm.mask[345:355, 335:345].all()  # a 160 um fragment (25,600 um^2) stays
    everything = tissue_mask_from_rgb(rgb, 8.0, min_area_um2=0)
    assert everything.mask[21, 21] and everything.mask[22:28, 302:308].all()
    tighter = tissue_mask_from_rgb(rgb, 8.0, min_area_um2=30_000)
    assert not tighter.mask[340:360, 330:350].any()


def test_holes_are_filled_up_to_the_limit():
    rgb, _ = _islands((400, 400), [(200, 200, 150)])
    yy, xx = np.mgrid[:400, :400]
    rgb[(yy - 200) ** 2 + (xx - 200) ** 2 <= 20**2] = GLASS  # a 0.08 mm^2 lumen
    rgb[(yy - 200) ** 2 + (xx - 260) ** 2 <= 5**2] = GLASS
    assert tissue_mask_from_rgb(rgb, 8.0).mask[200, 200]  # filled (below 0.25 mm^2)
    assert not tissue_mask_from_rgb(rgb, 8.0, max_hole_um2=10_000).mask[200, 200]
    assert tissue_mask_from_rgb(rgb, 8.0, max_hole_um2=10_000).mask[200, 260]
    assert not tissue_mask_from_rgb(rgb, 8.0, max_hole_um2=0).mask[200, 200]


def test_black_borders_and_ink_are_not_tissue():
    rgb, truth = _islands((500, 600), DISCS[:2])
    rgb[:, :25] = (12, 12, 14)  # scanner border
    rgb[470:480, :] = (40, 160, 80)  # green ink
    rgb[300:310, 250:600] = (45, 70, 190)  # blue ink, partly over tissue
    ink = np.zeros_like(truth)
    ink[470:480, :], ink[300:310, 250:600] = True, True
    for method in ("otsu", "od"):
        tm = tissue_mask_from_rgb(rgb, 8.0, method=method)
        assert not tm.mask[:, :25].any() and not tm.mask[470:480].any()
        assert tm.area_um2() == pytest.approx((truth & ~ink).sum() * 64.0, rel=0.05)
    kept = tissue_mask_from_rgb(rgb, 8.0, method="od", exclude_artifacts=False)
    assert kept.mask[:, :25].all()  # without the artefact rules the border is "tissue"


def test_blank_glass_raises_no_tissue():
    glass = np.clip(np.random.default_rng(1).normal(GLASS, 8, (300, 300, 3)), 0, 255)
    for method in ("otsu", "od"):
        with pytest.raises(NoTissueError, match="no tissue found") as err:
            tissue_mask_from_rgb(glass.astype(np.uint8), 8.0, method=method, path="blank.tif")
        assert err.value.path == "blank.tif" and "blank.tif" in str(err.value)
    assert issubclass(NoTissueError, ValueError)


def _brute(level0: np.ndarray, r, c, h, w) -> float:
    H, W = level0.shape
    inside = level0[max(r, 0) : max(min(r + h, H), 0), max(c, 0) : max(min(c + w, W), 0)]
    return inside.sum() / (h * w)


def _random_mask(seed=0, shape=(50, 70)):
    mask = np.random.default_rng(seed).random(shape) > 0.6
    # mask pixel = 4 x 4 level-0 pixels (8 um on a 2 um/px slide)
    return TissueMask(mask, pixel_size_um=8.0, level0_pixel_size_um=2.0, level0_shape=(200, 280))


def test_fraction_equals_the_brute_force_mean():
    tm = _random_mask()
    level0 = np.repeat(np.repeat(tm.mask, 4, axis=0), 4, axis=1)
    rng = np.random.default_rng(2)
    boxes = [
        (int(rng.integers(-30, 220)), int(rng.integers(-30, 300)), int(h), int(w))
        for h, w in rng.integers(1, 90, (500, 2))
    ]
    boxes += [(0, 0, 200, 280), (-50, -50, 10, 10), (199, 279, 5, 5), (3, 5, 1, 1)]
    expected = np.array([_brute(level0, *b) for b in boxes])
    got = np.array([tm.fraction(*b) for b in boxes])
    np.testing.assert_allclose(got, expected, atol=1e-12)  # partly covered mask pixels too
    rows, cols, hs, ws = (np.array(v) for v in zip(*boxes))
    np.testing.assert_allclose(tm.fractions(rows, cols, hs, ws), expected, atol=1e-12)
    assert tm.area_um2() == pytest.approx(tm.mask.sum() * 64.0)
    with pytest.raises(ValueError, match="height and width"):
        tm.fraction(0, 0, 0, 10)


def test_fraction_is_fast_for_100k_tiles():
    tm = TissueMask(
        np.random.default_rng(3).random((1563, 1563)) > 0.5,
        pixel_size_um=8.0,
        level0_pixel_size_um=0.25,
        level0_shape=(50_000, 50_000),
    )
    rng = np.random.default_rng(4)
    rows, cols = rng.uniform(0, 50_000, 100_000), rng.uniform(0, 50_000, 100_000)
    start = time.process_time()
    vector = tm.fractions(rows, cols, 448, 448)
    vector_s = time.process_time() - start
    start = time.process_time()
    scalar = [tm.fraction(r, c, 448, 448) for r, c in zip(rows, cols)]
    scalar_s = time.process_time() - start
    np.testing.assert_allclose(scalar, vector, atol=1e-12)
    assert vector_s < 0.5, f"fractions() took {vector_s:.2f} s CPU for 100,000 tiles"
    assert scalar_s < 5.0, f"fraction() took {scalar_s:.2f} s CPU for 100,000 tiles"


def test_tiles_with_tissue():
    tm = _random_mask(5)
    level0 = np.repeat(np.repeat(tm.mask, 4, axis=0), 4, axis=1)
    origins, fractions = tm.tiles(30, 40, min_fraction=0.3)
    expected = [
        (r, c, f)
        for r in range(0, 200, 30)
        for c in range(0, 280, 40)
        if (f := _brute(level0, r, c, 30, 40)) >= 0.3
    ]
    assert origins.tolist() == [[r, c] for r, c, _ in expected]
    np.testing.assert_allclose(fractions, [f for *_, f in expected])
    origins, _ = tm.tiles(20, stride=10, min_fraction=0)  # overlapping grid; glass never kept
    assert len(origins) and all(tm.fraction(r, c, 20, 20) > 0 for r, c in origins)


def _disc_slide(path, *, size=4096, p0=0.5, discs=((1200, 1300, 600), (2800, 2600, 900)), **kw):
    """A pyramidal TIFF of pink discs (level-0 cy, cx, r) on glass: returns the tissue area."""

    def tile_fn(level, r, c, n):
        yy, xx = np.mgrid[r : r + n, c : c + n] * 2**level + (2**level - 1) / 2
        inside = np.zeros((n, n), bool)
        for cy, cx, rad in discs:
            inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad
        out = np.full((n, n, 3), GLASS, np.uint8)
        out[inside] = PINK
        return out

    write_pyramidal_tiff(path, shape=(size, size), tile_fn=tile_fn, pixel_size_um=p0, **kw)
    return sum(np.pi * r * r for *_, r in discs) * p0 * p0


@pytest.mark.parametrize("min_size", [256, 1024])  # an 8 um/px level, or 2 um/px resampled
def test_detect_tissue_on_a_pyramid(tmp_path, min_size):
    path = tmp_path / "slide.tif"
    area = _disc_slide(path, tile=256, min_size=min_size)
    with open_image(path) as src:
        tm = detect_tissue(src)
    assert tm.pixel_size_um == 8.0 and tm.level0_pixel_size_um == 0.5
    assert tm.mask.shape == (256, 256) and tm.level0_shape == (4096, 4096)
    assert tm.area_um2() == pytest.approx(area, rel=0.03)
    assert tm.path == str(path)
    assert tm.fraction(1200 - 200, 1300 - 200, 400, 400) == 1.0  # inside a disc
    assert tm.fraction(0, 3500, 500, 500) == 0.0  # glass
    assert tm.describe()["tissue_area_mm2"] == pytest.approx(area / 1e6, rel=0.03)


def test_detect_tissue_pixel_size_policy_and_no_tissue(tmp_path):
    rgb, _ = _islands((600, 500), [(300, 250, 150)])
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, rgb, photometric="rgb")  # no pixel size
    with pytest.raises(ImageReadError, match="pixel size unknown"):
        detect_tissue(bare)
    tm = detect_tissue(bare, slide_pixel_size_um=2.0)  # the user's value
    assert tm.level0_pixel_size_um == 2.0 and tm.mask.shape == (150, 125)
    with open_image(bare) as src:  # an opened source without a pixel size: opened again
        assert detect_tissue(src, slide_pixel_size_um=2.0).mask.shape == (150, 125)
        assert src.pixel_size_um is None

    blank = tmp_path / "blank.tif"
    glass = np.clip(np.random.default_rng(6).normal(GLASS, 6, (1024, 1024, 3)), 0, 255)
    write_pyramidal_tiff(blank, glass.astype(np.uint8), tile=256, pixel_size_um=0.5, min_size=64)
    with pytest.raises(NoTissueError, match="blank.tif"):
        detect_tissue(blank)


def test_tiny_image_gets_a_finer_mask(tmp_path):
    rgb, truth = _islands((200, 150), [(100, 75, 50)])
    path = tmp_path / "field.tif"
    tifffile.imwrite(
        path, rgb, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )  # 0.5 um/px: the whole image is 100 x 75 um
    tm = detect_tissue(path)
    assert min(tm.mask.shape) >= 64 and 0.5 <= tm.pixel_size_um < 8.0
    assert tm.area_um2() == pytest.approx(truth.sum() * 0.25, rel=0.1)
