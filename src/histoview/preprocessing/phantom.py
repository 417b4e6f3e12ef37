"""Synthetic H&E breast-tissue phantoms with exact ground truth.

``make_phantom(label, preset=..., seed=...)`` draws a field of view that reads as an H&E
section at a glance and records exactly what it drew. It serves as napari sample data and
demo image, as an on-the-fly training set (attention-MIL benign vs malignant, nuclei graph
in situ vs invasive) and as ground truth for scoring explanation maps. It is procedural:
nothing is taken from any dataset.

What is drawn
    * Stroma: eosin-pink collagen of wavy fibre bundles (anisotropic noise sampled along
      warped, rotated coordinates), fine fibrils, varying pink intensity and elongated white
      clefts; sparse spindle fibroblasts aligned with the fibres; a few small round dark
      lymphocytes (more, in a halo, around a lesion).
    * Benign glands (60-150 um): white lumen (sometimes pale pink secretion), pale
      pink/purple cytoplasm, one neat ring of small uniform epithelial nuclei (6-8 um, long
      axis radial), a thin pink basement membrane and scattered flat myoepithelial nuclei.
    * ``in_situ``: one or more expanded ducts; a closed ring of flattened myoepithelial nuclei
      encloses crowded, enlarged (9-16 um), pleomorphic, hyperchromatic, disordered tumour
      nuclei with coarse chromatin and nucleoli; solid, cribriform or with a remnant lumen.
    * ``invasive``: an irregular lesion where the same tumour cells infiltrate the stroma in
      branching cords and nests (bands around the zero level of smooth noise), no ring.
    * Malignant images keep normal tissue (benign glands, stroma) around the lesion, which
      covers 15-50 % of the area (the target is drawn in 22-40 %).

Ground truth (coordinates (row, col) pixels)
    ``malignant_mask``: the lesion as a pathologist would outline it: duct areas (ring
    included) or the whole infiltrated region (tumour cords and the stroma between them),
    plus every tumour cell; empty for ``benign``. ``tumour_mask``: the tumour cells alone
    (their nuclei and cytoplasm; for in-situ ducts the filled duct): the instance-level
    truth of multiple-instance learning (Ilse et al. 2018: an instance is positive when it
    holds cancer cells), used to score patch-level explanations. ``nuclei_labels``: nucleus ``i`` is value ``i + 1``.
    Nuclei never overlap (a placement that collides is rejected), so each instance region is
    exactly the drawn nucleus; nuclei less than half visible at the border are dropped and
    not rendered, so the ground truth is what is visible. ``centroids`` are the centroids of
    the instance regions; ``outlines`` are the drawn polygons clipped to the image.
    ``nucleus_boundary`` marks nuclei on a gland ring: epithelial ring and myoepithelium of
    benign glands, the myoepithelial ring of in-situ ducts. Kinds: ``NUCLEUS_KINDS``.

Design choices
    * Sizes are micrometres, converted with ``pixel_size_um``; layout is set by area, so any
      shape >= (64, 64) works (very small fields hold only a duct or a few cells).
    * Colour is physical: haematoxylin and eosin optical densities (natural log, per unit
      Ruifrok & Johnston vector as in ``skimage.color``) combine by Beer-Lambert, with a per
      image stain strength (+-15 %), slight blur, sensor noise and a faint vignette, so
      ``skimage.color.rgb2hed`` separates nuclei cleanly for classical detectors.
    * Nuclei: perturbed ellipses (Fourier radius), rasterised from the same curve as the
      outline; shading from a per-nucleus optical density, a darker rim (vesicular tumour
      nuclei) and chromatin noise. Rings are laid out by arc length and shrink a nucleus
      rather than leave a gap, so in-situ rings are closed; tumour cells fill a jittered
      hexagonal lattice (crowding) and then random free spots.
    * Speed: smooth noise is generated on coarse grids and upsampled; loops run only over
      nuclei and glands (breakhis size ~0.2 s, bach size ~1.5-2.5 s on one core).
    * ``shape`` and ``pixel_size_um`` default to ``None``: a preset's value, else the
      BreakHis-like (460, 700) at 0.5 um. One ``numpy.random.default_rng(seed)`` drives
      everything, so the same arguments give byte-identical output.

This module lays out the tissue (glands, ducts, the invasive lesion) and its ground truth;
nucleus shapes and their placement are in :mod:`histoview.preprocessing._phantom_nuclei`,
noise fields, stroma texture and staining in :mod:`histoview.preprocessing._phantom_render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk

from histoview.preprocessing._phantom_nuclei import (
    _Canvas,
    _clip,
    _harmonics,
    _radius_xy,
    _ring,
)
from histoview.preprocessing._phantom_render import _render, _smooth_noise, _upsample

PHANTOM_CLASSES = ("benign", "in_situ", "invasive")
PHANTOM_PRESETS = {
    "breakhis": {"shape": (460, 700), "pixel_size_um": 0.5},
    "bach": {"shape": (1536, 2048), "pixel_size_um": 0.42},
}
NUCLEUS_KINDS = ("epithelial", "myoepithelial", "fibroblast", "lymphocyte", "tumour")


@dataclass(frozen=True)
class Phantom:
    """A synthetic H&E image and its ground truth; coordinates are (row, col) pixels."""

    image: np.ndarray
    label: str
    malignant_mask: np.ndarray
    nuclei_labels: np.ndarray
    tumour_mask: np.ndarray
    centroids: np.ndarray
    outlines: tuple
    nucleus_malignant: np.ndarray
    nucleus_boundary: np.ndarray
    nucleus_kind: tuple
    pixel_size_um: float
    seed: int

    @property
    def is_malignant(self) -> bool:
        return self.label != "benign"


def _polar(shape, centre, rmax):
    """Bounding-box slices plus row/col offsets and distance to ``centre`` inside them."""
    r_lo, c_lo = max(int(centre[0] - rmax), 0), max(int(centre[1] - rmax), 0)
    r_hi = min(int(centre[0] + rmax) + 2, shape[0])
    c_hi = min(int(centre[1] + rmax) + 2, shape[1])
    dr = np.arange(r_lo, r_hi, dtype=np.float32)[:, None] - centre[0]
    dc = np.arange(c_lo, c_hi, dtype=np.float32)[None, :] - centre[1]
    return (slice(r_lo, r_hi), slice(c_lo, c_hi)), dr, dc, np.hypot(dr, dc)


def _fits(centre, rmax, placed, gap):
    return all(np.hypot(centre[0] - p[0], centre[1] - p[1]) > rmax + p[2] + gap for p in placed)


def _gland(cv, z, centre, r0, harm):
    """Benign gland: lumen, cytoplasm, epithelial ring, basement membrane, myoepithelium."""
    s, rng = cv.s, cv.rng
    sl, dr, dc, d = _polar(cv.shape, centre, r0 * (1 + np.abs(harm[1]).sum()) + 3 * s)
    rad = r0 * _radius_xy(dc, dr, harm)
    thick = min(rng.uniform(10, 14) * s, 0.55 * r0)
    z["epi"][sl] |= d < rad
    z["lumen"][sl] |= d < rad - thick
    z["bm"][sl] |= (d >= rad) & (d < rad + 1.5 * s)
    _ring(cv, centre, r0, harm, "epithelial", 0.4 * thick, 1.2 * s)
    _ring(cv, centre, r0, harm, "myoepithelial", -1.2 * s, 6 * s, prob=0.35)


def _duct(cv, z, mask, centre, r0, harm):
    """In-situ duct: intact myoepithelial ring around crowded tumour cells."""
    s, rng = cv.s, cv.rng
    sl, dr, dc, d = _polar(cv.shape, centre, r0 * (1 + np.abs(harm[1]).sum()) + 3 * s)
    rad = r0 * _radius_xy(dc, dr, harm)
    inner = d < rad - 4.5 * s
    lumen = np.zeros_like(inner)
    style = rng.choice(["solid", "cribriform", "central"]) if r0 > 35 * s else "solid"
    if style == "central":
        lumen = d < rad * rng.uniform(0.25, 0.45)
    elif style == "cribriform":
        for _ in range(rng.integers(2, 7)):
            rc = rng.uniform(0, 0.6 * r0) * np.exp(1j * rng.uniform(0, 2 * np.pi))
            y, x = dr - rc.imag, dc - rc.real
            size = (rng.uniform(0.07, 0.16) * r0 + 3 * s) * _radius_xy(
                x, y, _harmonics(rng, 3, 0.3)
            )
            lumen |= np.hypot(x, y) < size
    mask[sl] |= d < rad
    z["epi"][sl] |= (d < rad) & ~inner
    z["lumen"][sl] |= lumen & inner
    z["cyto"][sl] |= inner & ~lumen
    z["bm"][sl] |= (d >= rad) & (d < rad + 2 * s)
    _ring(cv, centre, r0, harm, "myoepithelial", 2.2 * s, 0.8 * s)
    room = np.zeros(cv.shape, bool)
    room[sl] = (d < rad - 7 * s) & ~ndi.binary_dilation(lumen, iterations=int(3 * s))
    cells = cv.scatter(
        "tumour", room, 0, spacing=rng.uniform(10.5, 12.5), malignant=True, margin=0.5
    )
    cells += cv.scatter(
        "tumour", room, int(room.sum() / (150 * s * s)) + 5, malignant=True, margin=0.5
    )
    room[sl] = inner & ~lumen
    _at_least(cv, room, cells)


def _at_least(cv, room, cells, n=3):
    """Small lesions: add smaller tumour nuclei until ``n`` show (when there is room)."""
    for size in (0.8, 0.65) if len(cells) < n else ():
        cells += cv.scatter("tumour", room, 40, malignant=True, margin=0.3, size=size)
    return cells


def _invasive_region(rng, shape, frac):
    """Irregular lesion: distance to 1-2 centres plus smooth noise, thresholded at ``frac``."""
    step = max(1, min(shape) // 96)
    small = (shape[0] - 1) // step + 2, (shape[1] - 1) // step + 2
    g = np.indices(small, dtype=np.float32) / np.float32(max(small))
    f = np.full(small, np.inf, np.float32)
    for _ in range(rng.integers(1, 3)):
        c = rng.uniform(0.25, 0.75, 2) * np.array(small) / max(small)
        f = np.minimum(f, np.hypot(g[0] - c[0], g[1] - c[1]))
    f = -f + 0.08 * _smooth_noise(rng, small, max(small) / 12) + 0.03 * rng.random(small)
    return _upsample(f, shape, step) > np.quantile(f, 1 - frac)


def make_phantom(
    label: str = "invasive",
    *,
    shape: tuple[int, int] | None = None,
    pixel_size_um: float | None = None,
    seed: int = 0,
    preset: str | None = None,
) -> Phantom:
    """Draw a synthetic H&E phantom of class ``label`` (one of ``PHANTOM_CLASSES``).

    ``preset`` ("breakhis" or "bach") fills ``shape`` and ``pixel_size_um``; explicit values
    override it. Without either, ``shape=(460, 700)`` and ``pixel_size_um=0.5``. The same
    arguments give byte-identical output.
    """
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown label {label!r}; valid labels: {', '.join(PHANTOM_CLASSES)}")
    if preset is not None and preset not in PHANTOM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PHANTOM_PRESETS)}")
    base = PHANTOM_PRESETS[preset or "breakhis"]
    shape = tuple(int(v) for v in (base["shape"] if shape is None else shape))
    px = float(base["pixel_size_um"] if pixel_size_um is None else pixel_size_um)
    if len(shape) != 2 or min(shape) < 64 or not px > 0:
        raise ValueError(f"need shape (H, W) >= (64, 64) and pixel_size_um > 0, got {shape}, {px}")
    rng = np.random.default_rng(seed)
    cv = _Canvas(shape, px, rng)
    s, (h, w) = cv.s, shape
    z = {k: np.zeros(shape, bool) for k in ("epi", "lumen", "cyto", "bm")}
    mask = np.zeros(shape, bool)
    placed, angle = [], rng.uniform(0, np.pi)
    frac = rng.uniform(0.22, 0.4)
    if label == "in_situ":
        cap = np.pi * (0.42 * min(h, w)) ** 2 * 0.8
        k = max(
            int(rng.integers(1, 2 + h * w * px * px // 180_000)), int(np.ceil(frac * h * w / cap))
        )
        for i in range(k):
            r0 = min(
                np.sqrt(max(frac * h * w - mask.sum(), 0) / (np.pi * (k - i))), 0.42 * min(h, w)
            )
            for tries in range(200):
                r0 *= 0.93 if tries % 25 == 24 else 1.0
                harm = _harmonics(rng, 3, 0.12)
                rmax = r0 * (1 + np.abs(harm[1]).sum()) + 3 * s
                c = (
                    rng.uniform([rmax, rmax], [h - rmax, w - rmax])
                    if rmax < min(h, w) / 2
                    else None
                )
                if c is not None and _fits(c, rmax, placed, 10 * s):
                    _duct(cv, z, mask, c, r0, harm)
                    placed.append((c[0], c[1], rmax))
                    break
    elif label == "invasive":
        mask = _invasive_region(rng, shape, frac)
    tumour = mask.copy() if label == "in_situ" else np.zeros(shape, bool)
    near_lesion = ndi.binary_dilation(mask[::4, ::4], iterations=max(1, int(12 * s / 4)))
    gland_area, target = 0.0, rng.uniform(0.2, 0.35) * (1 - mask.mean()) * h * w
    for _ in range(int(h * w * px * px / 900)):
        r0 = min(rng.uniform(30, 75) * s, 0.4 * min(h, w))
        harm = _harmonics(rng, 3, 0.3)
        c = rng.uniform(0, 1, 2) * shape
        rmax = r0 * (1 + np.abs(harm[1]).sum()) + 3 * s
        sl = _polar(near_lesion.shape, c / 4, rmax / 4)[0]
        if _fits(c, rmax, placed, 12 * s) and not near_lesion[sl].any():
            _gland(cv, z, c, r0, harm)
            placed.append((c[0], c[1], rmax))
            gland_area += np.pi * r0 * r0
        if gland_area > target:
            break
    if label == "invasive":
        band = (
            np.abs(_smooth_noise(rng, shape, 14 * s))
            + np.maximum(_smooth_noise(rng, shape, 10 * s) - 1.0, 0) * -3
        )
        room = mask & ~z["epi"]
        cut = np.quantile(band[room][::7], [0.4, 0.6]) if room.any() else (0, 0)
        cells = cv.scatter(
            "tumour", room & (band < cut[0]), 0, spacing=rng.uniform(11, 13), malignant=True
        )
        cells += cv.scatter(
            "tumour", room & (band < cut[0]), int(room.sum() / (150 * s * s)) + 5, malignant=True
        )
        cells = _at_least(cv, room, cells)
        near = np.zeros(shape, bool)
        for r, c, (a, _b), _ang in cells:
            near[disk((r, c), 2.2 * a, shape=shape)] = True
        z["cyto"] |= near & room & (band < cut[1])
        mask |= z["cyto"]
        tumour |= z["cyto"]
    stroma = ~(z["epi"] | z["lumen"] | z["cyto"])
    area = stroma.mean() * h * w * px * px
    cellular = stroma & (_smooth_noise(rng, shape, 30 * s) > -0.6)
    cv.scatter("fibroblast", cellular, int(area / 900), angle=angle, margin=2.0)
    cv.scatter("lymphocyte", stroma, int(area / 6000), margin=0.5)
    if mask.any():
        halo = ndi.binary_dilation(near_lesion, iterations=max(1, int(30 * s / 4)))
        halo = halo[np.arange(h) // 4][:, np.arange(w) // 4] & stroma
        cv.scatter("lymphocyte", halo, int(halo.mean() * h * w * px * px / 800), margin=0.3)
    cen = cv.finalise()
    malignant = np.array([nu[2] for nu in cv.nuclei], bool)
    malignant_nuclei = np.isin(cv.labels, np.flatnonzero(malignant) + 1)
    mask |= malignant_nuclei
    tumour |= malignant_nuclei
    return Phantom(
        image=_render(rng, cv, z, cen, px, angle),
        label=label,
        malignant_mask=mask,
        nuclei_labels=cv.labels,
        tumour_mask=tumour,
        centroids=cen.reshape(-1, 2).astype(np.float64),
        outlines=tuple(_clip(nu[0].astype(np.float64), shape) for nu in cv.nuclei),
        nucleus_malignant=malignant,
        nucleus_boundary=np.array([nu[3] for nu in cv.nuclei], bool),
        nucleus_kind=tuple(nu[1] for nu in cv.nuclei),
        pixel_size_um=px,
        seed=int(seed),
    )
