"""The phantom whole slide (issue 17, item 6): files, pyramid, determinism, no seams, ground
truth, bounded memory, the CLI, the napari sample, and the demo weights finding its lesions."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from _background import Background
from histoview.preprocessing.phantom_slide import (
    LESION_NAMES,
    SLIDE_CLASSES,
    ground_truth_paths,
    load_ground_truth,
    write_phantom_slide,
)

SMALL = {"size": 4000, "seed": 2}  # 1 x 1 mm at 0.25 um/px: an in-situ and an invasive lesion
CHECK = {"size": 8000, "seed": 1}  # 2 x 2 mm, for the demo weights
#: the memory test's slides: 100 megapixels as a wide strip (rows of 20,000 px), and 2,048
MEMORY_SIZES = {"big": (5000, 20000), "small": (2048, 2048)}

#: what the memory test measures, in a process of its own: peak resident memory of writing
#: a slide. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
MEMORY_CODE = (
    "import re, sys\n"
    "from histoview.preprocessing.phantom_slide import write_phantom_slide\n"
    "write_phantom_slide(sys.argv[1], size=(int(sys.argv[2]), int(sys.argv[3])), seed=6)\n"
    "status = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s*(\\d+)', status).group(1))\n"
)

#: writes the demo weights' check slide in a process of its own; prints its PhantomSlide
CHECK_CODE = (
    "import pickle, sys\n"
    "from histoview.preprocessing.phantom_slide import write_phantom_slide\n"
    "slide = write_phantom_slide(sys.argv[1], size=int(sys.argv[2]), seed=int(sys.argv[3]))\n"
    "sys.stdout.buffer.write(pickle.dumps(slide))\n"
)


@pytest.fixture(scope="module", autouse=True)
def background(request, tmp_path_factory):
    """The memory test's processes and the check slide, written beside the other tests."""
    with Background(request) as bg:
        memory = "test_memory_stays_bounded_for_a_100_megapixel_slide"
        if bg.wanted(memory) and Path("/proc/self/status").exists():
            folder = tmp_path_factory.mktemp("memory")
            for key, (h, w) in MEMORY_SIZES.items():
                argv = [
                    sys.executable,
                    "-c",
                    MEMORY_CODE,
                    str(folder / f"{key}.tif"),
                    str(h),
                    str(w),
                ]
                bg.run(f"memory-{key}", argv)
        if bg.wanted("test_customnet_tiles_find_the_lesions") or bg.wanted(
            "test_amil_attention_finds_the_lesions"
        ):
            out = tmp_path_factory.mktemp("check") / "check.tif"
            argv = [
                sys.executable,
                "-c",
                CHECK_CODE,
                str(out),
                str(CHECK["size"]),
                str(CHECK["seed"]),
            ]
            bg.run("check_slide", argv, text=False, check=True)
        yield bg


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_phantom_slide(tmp_path_factory.mktemp("small") / "slide.tif", **SMALL)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_pyramid_and_pixel_size_read_back(small):
    from histoview.io import open_image

    for p in (small.path, small.labels_path, small.lesions_path, small.info_path):
        assert p.exists() and p.stat().st_size > 0
    assert small.labels_path.name == "slide.labels.tif"
    assert small.lesions_path.name == "slide.lesions.geojson"
    with open_image(small.path) as src:
        info = src.describe()
        assert info["pixel_size_um"] == pytest.approx(0.25)
        assert info["pixel_size_source"] == "file"
        shapes = [tuple(lv["shape"][:2]) for lv in info["levels"]]
        assert shapes == [(4000, 4000), (2000, 2000)]
        assert src.level_pixel_size(1) == pytest.approx(0.5)
        # level 0 is level 1 upsampled linearly (weights 3/4, 1/4): its 2 x 2 means are level 1
        # smoothed by (1/8, 3/4, 1/8) along each axis (up to rounding)
        l0 = src.read_region(0, (1600, 1600), (800, 800)).astype(float)
        l1 = src.read_region(1, (799, 799), (402, 402)).astype(float)
        means = (l0[0::2, 0::2] + l0[1::2, 0::2] + l0[0::2, 1::2] + l0[1::2, 1::2]) / 4
        smooth = 0.75 * l1[1:-1] + 0.125 * (l1[:-2] + l1[2:])
        smooth = 0.75 * smooth[:, 1:-1] + 0.125 * (smooth[:, :-2] + smooth[:, 2:])
        assert np.abs(means - smooth).max() <= 1.0
    with open_image(small.labels_path) as lab:
        assert lab.pixel_size_um == pytest.approx(8.0)


def test_lower_levels_are_means_of_the_level_above(tmp_path):
    """A slide with three levels: level 2 is the 2 x 2 mean of level 1, not a re-render."""
    from histoview.io import open_image

    slide = write_phantom_slide(tmp_path / "s.tif", size=(4096, 2048), seed=5, pixel_size_um=0.5)
    assert slide.levels == ((4096, 2048), (2048, 1024), (1024, 512))
    with open_image(slide.path) as src:
        l1 = src.read_region(1, (0, 0), (2048, 1024)).astype(int)
        l2 = src.read_region(2, (0, 0), (1024, 512)).astype(int)
    assert (l2.min(axis=2) < 200).mean() > 0.1  # tissue (glass alone would say little)
    s = l1[0::2, 0::2] + l1[1::2, 0::2] + l1[0::2, 1::2] + l1[1::2, 1::2]
    assert np.array_equal((s + 2) // 4, l2)


def test_same_seed_same_bytes_other_seed_other_slide(small, tmp_path):
    again = write_phantom_slide(tmp_path / "slide.tif", **SMALL)
    for a, b in zip(
        (small.path, small.labels_path, small.lesions_path),
        (again.path, again.labels_path, again.lesions_path),
    ):
        assert _sha(a) == _sha(b), a.name
    other = write_phantom_slide(tmp_path / "other.tif", size=SMALL["size"], seed=3)
    assert _sha(other.path) != _sha(small.path)


def _steps(img):
    """Mean absolute colour difference between each row and the next, over tissue."""
    a, b = img[:-1].astype(float), img[1:].astype(float)
    tissue = (a.min(axis=2) < 200) & (b.min(axis=2) < 200)
    diff = np.abs(b - a).mean(axis=2)
    n = tissue.sum(axis=1)
    return np.where(n > 50, (diff * tissue).sum(axis=1) / np.maximum(n, 1), np.nan)


def test_no_seams_at_tile_and_block_borders(small):
    """Across tile borders (every 512 px) and render-block borders (1024 render px) neighbouring
    pixels differ no more than anywhere else, and the file holds exactly what one window drawn
    across those borders holds."""
    from histoview.io import open_image
    from histoview.preprocessing._phantom_slide_layout import make_layout
    from histoview.preprocessing._phantom_slide_render import _SlideRenderer

    with open_image(small.path) as src:
        levels = [src.read_region(k, (0, 0), src.levels[k].shape[:2]) for k in (0, 1)]
    ratios = []
    for img in levels:
        borders = np.arange(512, img.shape[0], 512)
        for oriented in (img, img.transpose(1, 0, 2)):
            steps = _steps(oriented)
            # level 0 is upsampled: steps alternate in size, so compare like with like
            same = np.arange(len(steps)) % 2 == (borders[0] - 1) % 2
            inner = np.delete(steps, borders - 1)[np.delete(same, borders - 1)]
            top = np.nanpercentile(inner, 99.5)
            at = steps[borders - 1]
            at = at[np.isfinite(at)]
            assert (at <= top).all(), (img.shape, at, top)
            ratios += list(at / np.nanmedian(inner))
            # a seam (unrelated rows side by side) would stand far above that
            unrelated = _steps(np.stack([oriented[1000], oriented[1100]]))[0]
            assert unrelated > 2 * top
    assert len(ratios) >= 10 and np.mean(ratios) < 1.15, ratios
    lay = make_layout(SMALL["seed"], (SMALL["size"],) * 2, 0.25, 2)
    window = _SlideRenderer(lay).render(900, 900, 260, 260)  # across blocks and tiles at 1024
    assert np.array_equal(window, levels[1][900:1160, 900:1160])


def test_ground_truth_matches_between_label_map_and_polygons(small):
    gt = load_ground_truth(small.path)
    assert gt.pixel_size_um == 8.0 and gt.slide_shape == (4000, 4000)
    assert gt.labels.dtype == np.uint8 and gt.labels.shape == (125, 125)
    assert set(np.unique(gt.labels)) <= set(range(len(SLIDE_CLASSES)))
    kinds = {f["properties"]["classification"]["name"] for f in gt.lesions}
    assert kinds == set(LESION_NAMES.values())
    for feature in gt.lesions:
        kind = [
            k
            for k, v in LESION_NAMES.items()
            if v == feature["properties"]["classification"]["name"]
        ][0]
        area_px = 0.0
        for polygon in feature["geometry"]["coordinates"]:
            x, y = np.asarray(polygon[0], float).T
            area_px += 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        area_um2 = area_px * 0.25**2
        assert feature["properties"]["measurements"]["area_um2"] == pytest.approx(
            area_um2, rel=1e-3
        )
        label = SLIDE_CLASSES.index(kind)
        map_um2 = (gt.labels == label).sum() * 64.0
        assert map_um2 == pytest.approx(area_um2, rel=0.15), kind
        assert map_um2 > 0
    mask = gt.lesion_mask(2.0)
    assert mask.shape == (500, 500)
    assert mask.mean() == pytest.approx((gt.labels >= 2).mean(), rel=0.05)
    f = gt.fractions((0, 0), (4000, 4000))
    assert f.sum() == pytest.approx(1) and f[2] > 0 and f[3] > 0
    info = json.loads(small.info_path.read_text())
    assert info["seed"] == SMALL["seed"] and info["shape"] == [4000, 4000]
    assert info["pixel_size_um"] == 0.25 and info["render_pixel_size_um"] == 0.5
    assert {les["kind"] for les in info["lesions"]} == {"in_situ", "invasive"}


def test_lesions_look_like_lesions(small):
    """Inside the lesions the tissue is more haematoxylin (nuclei-dense) than benign tissue."""
    from skimage.color import rgb2hed

    from histoview.io import open_image

    gt = load_ground_truth(small.path)
    with open_image(small.path) as src:
        level1 = src.read_region(1, (0, 0), (2000, 2000))
    hema = rgb2hed(level1)[..., 0]
    labels = gt.label_map(0.5)
    assert labels.shape == (2000, 2000)
    benign, lesion = hema[labels == 1].mean(), hema[labels >= 2].mean()
    glass = hema[labels == 0].mean()
    assert lesion > benign > glass


def test_existing_files_are_refused_before_any_work(small, tmp_path):
    out = tmp_path / "s.tif"
    ground_truth_paths(out)["lesions"].write_text("{}")
    with pytest.raises(FileExistsError, match="lesions.geojson exists"):
        write_phantom_slide(out, size=2048, seed=0)
    assert not out.exists()
    with pytest.raises(ValueError, match="at least 1024"):
        write_phantom_slide(tmp_path / "t.tif", size=500)


def test_cli_writes_the_slide_and_its_ground_truth(tmp_path, capsys):
    from histoview.cli import main

    out = tmp_path / "cli.tif"
    assert main(["phantom-slide", str(out), "--size", "2048", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    for p in (out, *ground_truth_paths(out).values()):
        assert p.exists() and f"wrote {p}" in printed
    assert main(["phantom-slide", str(out), "--size", "2048", "--seed", "4"]) == 2
    assert "exists" in capsys.readouterr().err
    args = ["phantom-slide", str(out), "--size", "2048", "--seed", "5", "--pixel-size", "0.5"]
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(ground_truth_paths(out)["info"].read_text())["pixel_size_um"] == 0.5


@pytest.mark.slow
def test_memory_stays_bounded_for_a_100_megapixel_slide(background):
    """Peak resident memory of a process writing a 5,000 x 20,000 slide (100 megapixels, 300
    MB of level 0), against one writing a 2,048 one: well under 1 GiB, and nearly the same
    (holding the whole level 0 would add 286 MiB). Both processes start with the module."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc (VmHWM: the process's peak resident memory)")
    peaks = {}
    for key in MEMORY_SIZES:
        done = background.result(f"memory-{key}")
        assert done.returncode == 0, done.stderr
        peaks[key] = int(done.stdout.split()[-1]) / 1024  # MiB (Linux: kilobytes)
    assert peaks["big"] < 500, peaks
    assert peaks["big"] - peaks["small"] < 150, peaks


# -- the bundled demo weights find the lesions -------------------------------------------------
@pytest.fixture(scope="module")
def check_slide(background):
    """``write_phantom_slide(..., **CHECK)``, written by a process the module started."""
    return pickle.loads(background.result("check_slide").stdout)


def _demo(method):
    from histoview.explain.run import load_for_method
    from histoview.models.inputs import InputSpec

    net, meta, _ = load_for_method(method)
    return net, InputSpec.from_checkpoint(meta, net)


@pytest.mark.slow
def test_customnet_tiles_find_the_lesions(check_slide):
    """Tiles of customnet's training field of view (460 px at its 0.5 um/px, resized to its
    128 x 128 input, as the phantoms it learnt from were): its malignant probability against
    the tile's lesion label (lesion >= 25 % of the tile vs none), tiles with >= 50 % tissue."""
    import torch

    from histoview.io import open_image
    from histoview.training.metrics import roc_auc

    net, spec = _demo("gradcam")
    gt = load_ground_truth(check_slide.path)
    tiles, frac = [], []
    with open_image(check_slide.path) as src:
        h, w = src.levels[1].height, src.levels[1].width
        for r in range(0, h - 460 + 1, 230):
            for c in range(0, w - 460 + 1, 230):
                f = gt.fractions((2 * r, 2 * c), (920, 920))
                if f[0] <= 0.5:
                    tiles.append(src.read_region(1, (r, c), (460, 460)))
                    frac.append(f[2] + f[3])
    frac = np.array(frac)
    with torch.no_grad():
        p = torch.softmax(net(spec.images(np.stack(tiles))), -1)[:, 1].numpy()
    keep = (frac >= 0.25) | (frac == 0)
    y = frac[keep] >= 0.25
    assert y.sum() >= 3 and (~y).sum() >= 20
    assert roc_auc(y, p[keep]) >= 0.9


@pytest.mark.slow
def test_amil_attention_finds_the_lesions(check_slide):
    """A-MIL on 1 x 1 mm regions straddling each lesion's border: per-patch attention
    scores against the lesion mask (patches >= 50 % tissue; lesion > 50 % vs none)."""
    import torch

    from histoview.io import open_image
    from histoview.training.metrics import roc_auc

    net, spec = _demo("amil")
    gt = load_ground_truth(check_slide.path)
    labels = gt.label_map(2.0)  # 7 x 7 label pixels per 28 px patch at 0.5 um/px
    scores, ys = [], []
    with open_image(check_slide.path) as src:
        h, w = src.levels[1].height, src.levels[1].width
        for les in gt.info["lesions"]:
            x0, y0, x1, y1 = les["bbox_px"]
            r = int(np.clip((y0 + y1) / 4 - 1024, 0, h - 2048))
            c = int(np.clip(x0 / 2 - 1024, 0, w - 2048))
            bag, grid = spec.bag(src.read_region(1, (r, c), (2048, 2048)))
            with torch.no_grad():
                s = net.pool.w(torch.tanh(net.pool.V(net.forward_features(bag))))[0, :, 0]
            for (pr, pc), v in zip(grid.origins, s.numpy()):
                i, j = (r + pr) // 4, (c + pc) // 4
                patch = labels[i : i + 7, j : j + 7]
                lesion = (patch >= 2).mean()
                if (patch == 0).mean() <= 0.5 and (lesion > 0.5 or lesion == 0):
                    scores.append(v)
                    ys.append(lesion > 0.5)
    ys = np.array(ys)
    assert ys.sum() >= 100 and (~ys).sum() >= 100
    assert roc_auc(ys, np.array(scores)) >= 0.9


# -- napari ------------------------------------------------------------------------------------
@pytest.mark.gui
def test_sample_slide_opens_as_multiscale_with_its_outlines(
    make_napari_viewer, tmp_path, monkeypatch
):
    from histoview.viewer import _sample_data

    monkeypatch.setenv("HISTOVIEW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(
        _sample_data, "SAMPLE_SLIDE", {"size": 3072, "seed": 0, "pixel_size_um": 0.25}
    )
    viewer = make_napari_viewer()
    viewer.open_sample("histoview", "phantom_slide")
    image, shapes = viewer.layers
    assert image.multiscale and len(image.data) == 2
    assert tuple(image.scale) == (0.25, 0.25) and tuple(shapes.scale) == (0.25, 0.25)
    assert set(shapes.features["class"]) == set(LESION_NAMES.values())
    cached = list((tmp_path / "phantom-slides").glob("*.tif"))
    assert len(cached) == 2  # the slide and its label map, nothing half-written
    mtime = max(p.stat().st_mtime_ns for p in cached)
    viewer.layers.clear()
    viewer.open_sample("histoview", "phantom_slide")  # from the cache, not written again
    assert max(p.stat().st_mtime_ns for p in cached) == mtime
