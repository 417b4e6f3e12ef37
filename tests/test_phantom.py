"""Tests for the synthetic H&E phantom generator."""

from functools import cache

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.draw import polygon
from skimage.measure import points_in_poly

from histoview.preprocessing.phantom import (
    PHANTOM_CLASSES,
    PHANTOM_PRESETS,
    Phantom,
    make_phantom,
)

KINDS = {"epithelial", "myoepithelial", "fibroblast", "lymphocyte", "tumour"}
SMALL = (181, 243)
CASES = [(lab, pre) for lab in PHANTOM_CLASSES for pre in ("breakhis", "bach", "small")]


@cache
def phantom(label, where="breakhis", seed=0) -> Phantom:
    if where == "small":
        return make_phantom(label, shape=SMALL, pixel_size_um=0.5, seed=seed)
    return make_phantom(label, preset=where, seed=seed)


def test_constants():
    assert PHANTOM_CLASSES == ("benign", "in_situ", "invasive")
    assert PHANTOM_PRESETS["breakhis"] == {"shape": (460, 700), "pixel_size_um": 0.5}
    assert PHANTOM_PRESETS["bach"] == {"shape": (1536, 2048), "pixel_size_um": 0.42}


def test_deterministic_for_a_seed():
    a, b = make_phantom("invasive", seed=7), make_phantom("invasive", seed=7)
    for field in (
        "image",
        "malignant_mask",
        "nuclei_labels",
        "centroids",
        "nucleus_malignant",
        "nucleus_boundary",
    ):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.nucleus_kind == b.nucleus_kind
    assert all(np.array_equal(p, q) for p, q in zip(a.outlines, b.outlines, strict=True))
    c = make_phantom("invasive", seed=8)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.malignant_mask, c.malignant_mask)


@pytest.mark.parametrize("label,where", CASES)
def test_shapes_and_dtypes(label, where):
    p = phantom(label, where)
    shape = SMALL if where == "small" else PHANTOM_PRESETS[where]["shape"]
    n = len(p.centroids)
    assert p.image.shape == (*shape, 3) and p.image.dtype == np.uint8
    assert p.malignant_mask.shape == shape and p.malignant_mask.dtype == bool
    assert p.nuclei_labels.shape == shape and p.nuclei_labels.dtype == np.int32
    assert p.centroids.shape == (n, 2) and p.centroids.dtype == np.float64 and n > 0
    assert len(p.outlines) == len(p.nucleus_kind) == n
    assert all(o.ndim == 2 and o.shape[1] == 2 and len(o) >= 3 for o in p.outlines)
    assert all(o.dtype == np.float64 for o in p.outlines)
    assert p.nucleus_malignant.shape == p.nucleus_boundary.shape == (n,)
    assert p.nucleus_malignant.dtype == p.nucleus_boundary.dtype == bool
    assert set(p.nucleus_kind) <= KINDS
    assert p.label == label and p.is_malignant == (label != "benign") and p.seed == 0
    assert p.pixel_size_um == (0.5 if where == "small" else PHANTOM_PRESETS[where]["pixel_size_um"])


@pytest.mark.parametrize("label,where", CASES)
def test_malignant_area(label, where):
    p = phantom(label, where)
    frac = p.malignant_mask.mean()
    if label == "benign":
        assert frac == 0 and not p.nucleus_malignant.any()
    else:
        assert 0.15 <= frac <= 0.5
        assert p.nucleus_malignant.sum() >= 3


@pytest.mark.parametrize("label,where", CASES)
def test_ground_truth_consistency(label, where):
    p = phantom(label, where)
    lab, n = p.nuclei_labels, len(p.centroids)
    assert np.array_equal(np.unique(lab), np.arange(n + 1))
    ids = np.arange(1, n + 1)
    region_centroids = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, ids))
    assert np.abs(region_centroids - p.centroids).max() <= 1.5
    rc = np.round(p.centroids).astype(int)
    assert np.array_equal(lab[rc[:, 0], rc[:, 1]], ids)
    areas = np.bincount(lab.ravel())[1:]
    for i in range(0, n, max(1, n // 200)):  # outline raster == instance region
        rr, cc = polygon(p.outlines[i][:, 0], p.outlines[i][:, 1], lab.shape)
        inter = (lab[rr, cc] == i + 1).sum()
        assert inter / (len(rr) + areas[i] - inter) > 0.8, i
    malignant = p.nucleus_malignant
    assert np.array_equal(malignant, np.array(p.nucleus_kind) == "tumour")
    assert p.malignant_mask[rc[malignant, 0], rc[malignant, 1]].all()


@pytest.mark.parametrize("label,where", CASES)
def test_colours_read_as_he(label, where):
    p = phantom(label, where)
    img = p.image.astype(float)
    nuclei = p.nuclei_labels > 0
    glands = np.isin(p.nuclei_labels, np.flatnonzero(p.nucleus_boundary) + 1) | p.malignant_mask
    far = ndi.distance_transform_edt(~glands[::2, ::2]) * 2 * p.pixel_size_um > 15
    stroma = far.repeat(2, 0).repeat(2, 1)[: img.shape[0], : img.shape[1]]
    stroma &= ~ndi.binary_dilation(nuclei, iterations=3) & (img.mean(-1) < 225)
    tissue = img[stroma].mean(0)
    r, g, b = tissue
    assert r > b > g  # eosin pink
    nuc = img[nuclei].mean(0)
    assert nuc.mean() < tissue.mean() - 40  # darker
    assert nuc[2] / nuc[0] > tissue[2] / tissue[0]  # bluer / purpler
    hema = rgb2hed(p.image)[..., 0]
    assert hema[nuclei].mean() > 3 * hema[~nuclei].mean()


@pytest.mark.parametrize("where", ["breakhis", "bach", "small"])
def test_in_situ_tumour_is_enclosed_by_a_ring(where):
    p = phantom("in_situ", where)
    comp, n = ndi.label(p.malignant_mask)
    rc = np.round(p.centroids).astype(int)
    where_c = comp[rc[:, 0], rc[:, 1]]
    kinds = np.array(p.nucleus_kind)
    for k in range(1, n + 1):
        ring = p.nucleus_boundary & (where_c == k)
        tumour = p.nucleus_malignant & (where_c == k)
        assert (kinds[ring] == "myoepithelial").all()
        if not tumour.any():
            continue
        d = p.centroids[ring] - p.centroids[tumour].mean(0)
        loop = p.centroids[ring][np.argsort(np.arctan2(d[:, 0], d[:, 1]))]
        step_um = np.hypot(*(loop - np.roll(loop, 1, 0)).T) * p.pixel_size_um
        assert ring.sum() >= 5 and step_um.max() < 14  # closed ring: no nucleus missing
        assert points_in_poly(p.centroids[tumour], loop).all()
    assert p.nucleus_malignant.sum() == (p.nucleus_malignant & (where_c > 0)).sum()


@pytest.mark.parametrize("where", ["breakhis", "bach", "small"])
def test_invasive_tumour_is_not_enclosed(where):
    p = phantom("invasive", where)
    rc = np.round(p.centroids).astype(int)
    grown = ndi.binary_dilation(p.malignant_mask, iterations=3)
    assert not (p.nucleus_boundary & grown[rc[:, 0], rc[:, 1]]).any()
    assert "myoepithelial" not in {
        k for k, m in zip(p.nucleus_kind, grown[rc[:, 0], rc[:, 1]], strict=True) if m
    }


def test_benign_glands_are_ringed_by_epithelium():
    p = phantom("benign")
    kinds = np.array(p.nucleus_kind)
    assert (kinds[p.nucleus_boundary] != "fibroblast").all()
    assert (kinds == "epithelial").sum() >= 20 and p.nucleus_boundary.sum() >= 20
    assert {"fibroblast", "epithelial"} <= set(kinds)


def test_arguments():
    p = make_phantom("benign", preset="bach", shape=(100, 120))
    assert p.image.shape == (100, 120, 3) and p.pixel_size_um == 0.42
    assert make_phantom("benign", preset="breakhis", pixel_size_um=0.3).pixel_size_um == 0.3
    assert make_phantom("in_situ", shape=(64, 64), seed=3).image.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="benign.*in_situ.*invasive"):
        make_phantom("cancer")
    with pytest.raises(ValueError, match="breakhis.*bach"):
        make_phantom("benign", preset="camelyon")
    with pytest.raises(ValueError):
        make_phantom("benign", shape=(32, 100))


@pytest.mark.parametrize("label", ["benign", "in_situ", "invasive"])
def test_tumour_mask_is_the_tumour_cells_inside_the_lesion(label):
    ph = make_phantom(label, seed=11)
    assert not (ph.tumour_mask & ~ph.malignant_mask).any()
    if label == "benign":
        assert not ph.tumour_mask.any()
        return
    r, c = np.round(ph.centroids[ph.nucleus_malignant]).astype(int).T
    assert ph.tumour_mask[r, c].all()
    if label == "invasive":  # the lesion outline also holds stroma between the cords
        assert ph.tumour_mask.sum() < ph.malignant_mask.sum()
