"""A-MIL on a slide: streaming attention pooling is exactly full-bag pooling; the slide run's
prediction and attention map equal one forward of the whole bag; the map's OME-TIFF overlays
in place (histoview.explain.slide_amil, slide_run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _slides import write_slide  # noqa: E402
from histoview.explain.slide_amil import (  # noqa: E402
    attention_logits,
    combine,
    merge_pooling,
    tile_pooling,
)
from histoview.models.amil import AMIL  # noqa: E402


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("amil-slide") / "slide.tif")


@pytest.mark.parametrize("gated", [False, True])
def test_streaming_pooling_equals_full_bag(gated):
    torch.manual_seed(0)
    model = AMIL(3, gated=gated).eval()
    with torch.no_grad():
        for p in model.parameters():  # spread the logits so the softmax is far from uniform
            p.mul_(4.0)
        bag = torch.rand(700, 3, 28, 28)
        logits_full, attention = model(bag, return_attention=True)
        h = model.forward_features(bag)[0]
        lo = attention_logits(model.pool, h)
        # tiles of uneven size, some empty, in a shuffled order
        rng = np.random.default_rng(1)
        tile_of = torch.from_numpy(np.sort(rng.integers(0, 40, len(h)))[rng.permutation(len(h))])
        m, s, v = tile_pooling(lo, h, tile_of, 45)
        assert (s[40:] == 0).all() and np.isneginf(m[40:]).all()
        # merging in two halves, then combining, is the same rule
        M, S, V = combine(
            merge_pooling(m[:17], s[:17], v[:17]), merge_pooling(m[17:], s[17:], v[17:])
        )
        M1, S1, V1 = merge_pooling(m, s, v)
    assert M == pytest.approx(M1) and S == pytest.approx(S1)
    np.testing.assert_allclose(V, V1, rtol=1e-12)
    z = V / S
    z_full = (attention[0].double()[:, None] * h.double()).sum(0).numpy()
    np.testing.assert_allclose(z, z_full, rtol=1e-5, atol=1e-6)
    head = model.head[-1]
    with torch.no_grad():
        logits = torch.from_numpy(z).float() @ head.weight.T + head.bias
    np.testing.assert_allclose(logits.numpy(), logits_full[0].numpy(), rtol=1e-4, atol=1e-5)
    weights = np.exp(lo.double().numpy() - M) / S
    np.testing.assert_allclose(weights, attention[0].numpy(), rtol=1e-4, atol=1e-9)
    assert weights.sum() == pytest.approx(1.0)


def _full_bag(slide_path, store, spec):
    """The slide's bag rebuilt without the engine: every kept patch of every tissue tile."""
    from histoview.io import open_image
    from histoview.preprocessing.patches import glass_fraction
    from histoview.preprocessing.transforms import to_tensor

    grid = store.grid
    with open_image(slide_path) as src:
        level0 = src.read_level(0)[..., :3]
    rows, cols = grid.shape
    t = grid.tile_size
    frame = np.full((rows * t, cols * t, 3), 255, np.uint8)
    frame[: level0.shape[0], : level0.shape[1]] = level0
    patches, where = [], []
    p = spec.patch_size
    for index in grid.tissue_indices():
        fr, fc = grid.box(index).frame_rc
        for i in range(t // p):
            for j in range(t // p):
                patch = frame[fr + i * p : fr + (i + 1) * p, fc + j * p : fc + (j + 1) * p]
                if glass_fraction(patch[None])[0] <= 0.9:
                    patches.append(patch)
                    where.append(((fr + i * p) // p, (fc + j * p) // p))
    bag = to_tensor(np.stack(patches), spec.mean, spec.std)
    return bag, np.array(where)


def test_slide_run_equals_one_forward_of_the_whole_bag(slide, tmp_path):
    from histoview.explain.run import load_for_method
    from histoview.explain.slide_run import explain_slide
    from histoview.models.inputs import InputSpec

    res = explain_slide(slide, "amil", out_dir=tmp_path, workers=0, batch_size=3, keep_store=True)
    net, meta, _ = load_for_method("amil", device="cpu")
    bag, where = _full_bag(slide, res.store, InputSpec.from_checkpoint(meta, net))
    with torch.no_grad():
        logits, attention = net(bag, return_attention=True)
    probs = torch.softmax(logits, -1)[0].numpy()
    got = res.summary["probabilities"]
    np.testing.assert_allclose([got["benign"], got["malignant"]], probs, atol=1e-5)
    assert res.summary["num_patches"] == len(bag)
    final = np.asarray(res.store.final("attention")[:])
    relative = attention[0].numpy() / attention[0].numpy().max()
    np.testing.assert_allclose(final[where[:, 0], where[:, 1]], relative, rtol=1e-4, atol=1e-6)
    # patches outside the bag are 0; the weights sum to 1 through attention_sum
    outside = np.ones(final.shape, bool)
    outside[where[:, 0], where[:, 1]] = False
    assert (final[outside] == 0).all()
    assert final.sum() / res.summary["attention_sum"] == pytest.approx(1.0, rel=1e-5)
    # the invasive phantom (right half) draws the attention, as on single images
    assert res.summary["prediction"] == "malignant"


def test_map_ome_tiff_has_the_maps_pixel_size_and_place(slide, tmp_path):
    import tifffile

    from histoview.explain.slide_run import explain_slide
    from histoview.io import open_image

    # a region in micrometres: x 200 um, y 224 um (448 px at 0.5 um/px), 400 x 200 um
    res = explain_slide(slide, "amil", out_dir=tmp_path, workers=0, region="200,224,400,200um")
    assert res.store is None and not res.store_path.exists()  # the working store is gone
    # named after the slide and the region: never a numbered copy of the whole slide's map
    stem = f"{Path(slide).stem}.region-x400-y448-800x400"
    assert res.outputs["map"].name == f"{stem}.amil.ome.tif"
    assert res.outputs["json"].name == f"{stem}.amil.json"
    assert res.store_path.name == f"{stem}.amil.zarr"
    record = json.loads(res.outputs["json"].read_text())
    assert record["map_pixel_size_um"] == pytest.approx(14.0)  # 28 px x 0.5 um/px
    assert record["region"]["level0_pixels"] == {
        "x": 400.0,
        "y": 448.0,
        "width": 800.0,
        "height": 400.0,
    }
    assert record["checkpoint_sha256"] and "Research use only" in record["notice"]
    with open_image(res.outputs["map"]) as src:
        assert src.pixel_size_um == pytest.approx(14.0)
        assert src.shape[:2] == (-(-400 // 28), -(-800 // 28))
    with tifffile.TiffFile(res.outputs["map"]) as tf:
        xml = tf.ome_metadata
    assert 'PositionX="200' in xml and 'PositionY="224' in xml
    with open_image(res.outputs["tissue"]) as src:
        assert src.pixel_size_um > 0
