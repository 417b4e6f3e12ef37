"""Stain normalisation (Macenko, Reinhard) and HED jitter: recovery of known stains,
round trips, background robustness, refusals, and agreement with torchstain itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoview.preprocessing.stain import (
    MIN_TISSUE_PIXELS,
    HedJitter,
    StainNormalisationError,
    StainNormaliser,
    hed_jitter,
    tissue_mask,
)

# Macenko et al.'s reference H&E optical-density vectors (torchstain's default), and another
# lab's pair (haematoxylin redder, eosin bluer)
HE_A = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
HE_B = np.array([[0.68, 0.36], [0.66, 0.80], [0.32, 0.48]])


def _unit(he):
    return he / np.linalg.norm(he, axis=0)


def stained(he, *, shape=(120, 160), background=0.0, seed=0, max_c=(2.0, 1.5)) -> np.ndarray:
    """Beer-Lambert H&E, ``I + 1 = 240 exp(-HE C)`` (the optical density's own form), with
    random concentrations: a third of the pixels haematoxylin only (nuclei), a third eosin
    only (stroma), a third both; the right ``background`` share of columns is glass."""
    rng = np.random.default_rng(seed)
    h, w = shape
    c = np.stack([rng.uniform(0.8, max_c[0], (h, w)), rng.uniform(0.8, max_c[1], (h, w))])
    kind = rng.integers(3, size=(h, w))
    c[1][kind == 0] = 0
    c[0][kind == 1] = 0
    od = np.einsum("sk,khw->hws", _unit(he), c)
    rgb = np.clip(np.round(240 * np.exp(-od) - 1), 0, 255).astype(np.uint8)
    cut = int(round(w * (1 - background)))
    rgb[:, cut:] = 250
    return rgb


def _angle_deg(a, b):
    a, b = _unit(a), _unit(b)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=0), -1, 1)))


def test_macenko_recovers_the_stain_vectors():
    norm = StainNormaliser("macenko").fit(stained(HE_A))
    assert np.all(_angle_deg(norm.stain_matrix, HE_A) < 4), norm.stain_matrix
    assert norm.fitted_on["images"] == 1


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_transform_maps_onto_the_reference_stain(method):
    ref, other = stained(HE_A, seed=1), stained(HE_B, seed=2)
    norm = StainNormaliser(method).fit(ref)
    out = norm.transform(other)
    assert out.dtype == np.uint8 and out.shape == other.shape
    again = StainNormaliser(method).fit(out)
    before = StainNormaliser(method).fit(other)
    if method == "macenko":
        assert np.all(_angle_deg(again.stain_matrix, HE_A) < 5)
        assert np.all(_angle_deg(before.stain_matrix, HE_A) > 5)  # it was another stain
    else:
        gap_after = np.abs(again.lab_means - norm.lab_means).max()
        gap_before = np.abs(before.lab_means - norm.lab_means).max()
        assert gap_after < 1.5 < gap_before


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_the_reference_round_trips_and_is_deterministic(method):
    ref = stained(HE_A, seed=3, background=0.3)
    norm = StainNormaliser(method).fit(ref)
    out = norm.transform(ref)
    tissue = tissue_mask(ref)
    err = np.abs(out.astype(int) - ref.astype(int))[tissue].mean()
    assert err < 3.0, err
    assert np.array_equal(out, norm.transform(ref))
    assert StainNormaliser(method).fit(ref).to_dict() == norm.to_dict()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_does_not_change_the_fit(method):
    """Tissue alone and the same tissue beside four times as much glass: the same estimate
    (torchstain alone, on every pixel, would dilute the concentrations with glass)."""
    tissue = stained(HE_A, shape=(100, 100), seed=4)
    padded = np.full((100, 500, 3), 250, np.uint8)
    padded[:, :100] = tissue
    a = StainNormaliser(method).fit(tissue).to_dict()
    b = StainNormaliser(method).fit(padded).to_dict()
    keys = ("stain_matrix", "max_concentrations") if method == "macenko" else ("lab_means",)
    for key in keys:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    if method == "macenko":
        import torchstain

        ts = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        ts.fit(padded)
        assert np.abs(ts.maxCRef - np.asarray(a["max_concentrations"])).max() > 0.05


def test_macenko_equals_torchstain_on_an_image_of_tissue_only():
    import torchstain

    ref, src = stained(HE_A, seed=5), stained(HE_B, seed=6)
    assert tissue_mask(ref).all() and tissue_mask(src).all()
    ts = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ts.fit(ref)
    expected, _, _ = ts.normalize(src, stains=False)
    norm = StainNormaliser("macenko").fit(ref)
    np.testing.assert_allclose(norm.stain_matrix, ts.HERef, atol=1e-6)
    diff = np.abs(norm.transform(src).astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_reinhard_equals_torchstain_on_an_image_of_tissue_only():
    import torchstain

    ref, src = stained(HE_A, seed=7), stained(HE_B, seed=8)
    ts = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
    ts.fit(ref)
    expected = ts.normalize(src)
    diff = np.abs(StainNormaliser("reinhard").fit(ref).transform(src).astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_to_dict_is_json_and_from_dict_applies_the_same(method):
    norm = StainNormaliser(method).fit([stained(HE_A, seed=9), stained(HE_A, seed=10)])
    assert norm.fitted_on["images"] == 2
    back = StainNormaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert back == norm
    src = stained(HE_B, seed=11, background=0.4)
    assert np.array_equal(back.transform(src), norm.transform(src))


def test_from_dict_names_the_bad_key():
    d = StainNormaliser("macenko").fit(stained(HE_A)).to_dict()
    with pytest.raises(ValueError, match="max_concentrations"):
        StainNormaliser.from_dict({**d, "max_concentrations": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="stain_matrix"):
        StainNormaliser.from_dict({**d, "stain_matrix": [[1, 2]]})
    with pytest.raises(ValueError, match="stain method"):
        StainNormaliser.from_dict({**d, "method": "vahadane"})
    with pytest.raises(ValueError, match="not fitted"):
        StainNormaliser("reinhard").to_dict()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_tiny_and_one_colour_images_are_refused_by_name(method):
    norm = StainNormaliser(method).fit(stained(HE_A))
    blank = np.full((64, 64, 3), 245, np.uint8)
    with pytest.raises(StainNormalisationError, match="0 tissue pixels of 4096.*blank"):
        norm.transform(blank)
    with pytest.raises(StainNormalisationError, match="blank, background only or too small"):
        StainNormaliser(method).fit(blank)
    tiny = stained(HE_A, shape=(5, 5))
    assert tiny.shape[0] * tiny.shape[1] < MIN_TISSUE_PIXELS
    with pytest.raises(StainNormalisationError, match="tissue pixels of 25"):
        norm.transform(tiny)
    flat = np.zeros((40, 40, 3), np.uint8) + np.array([180, 90, 160], np.uint8)
    with pytest.raises(StainNormalisationError, match="one colour|two stains"):
        norm.transform(flat)
    with pytest.raises(StainNormalisationError):
        StainNormaliser(method).fit(flat)
    with pytest.raises(ValueError, match="uint8"):
        norm.transform(blank.astype(np.float32))
    keep = StainNormaliser.from_dict({**norm.to_dict(), "on_no_tissue": "keep"})
    assert np.array_equal(keep.transform(blank), blank)


def test_no_nan_on_a_mostly_background_image():
    norm = StainNormaliser("macenko").fit(stained(HE_A))
    img = np.full((200, 200, 3), 252, np.uint8)
    img[:12, :12] = stained(HE_B, shape=(12, 12), seed=12)  # 144 tissue pixels
    out = norm.transform(img)
    assert out.dtype == np.uint8  # (a NaN would have been cast to 0 silently: check the tissue)
    assert np.all(out[:12, :12].astype(int).sum(-1) > 0)


def test_hed_jitter():
    img = stained(HE_A, seed=13, background=0.3)
    assert np.array_equal(hed_jitter(img, 0.0, np.random.default_rng(0)), img)
    a = hed_jitter(img, 0.05, np.random.default_rng(1))
    b = HedJitter(0.05)(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    c = hed_jitter(img, 0.05, np.random.default_rng(2))
    assert not np.array_equal(a, c)
    change = np.abs(a.astype(int) - img.astype(int)).mean()
    assert 0.5 < change < 40, change
    bigger = np.abs(hed_jitter(img, 0.2, np.random.default_rng(1)).astype(int) - img).mean()
    assert bigger > change
    with pytest.raises(ValueError, match="sigma"):
        HedJitter(1.5)
