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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb_from_hed
from skimage.draw import disk

PHANTOM_CLASSES = ("benign", "in_situ", "invasive")
PHANTOM_PRESETS = {
    "breakhis": {"shape": (460, 700), "pixel_size_um": 0.5},
    "bach": {"shape": (1536, 2048), "pixel_size_um": 0.42},
}
NUCLEUS_KINDS = ("epithelial", "myoepithelial", "fibroblast", "lymphocyte", "tumour")

# long semi-axis (um), short/long ratio, outline roughness, haematoxylin OD, rim, texture
_KIND_PARAMS = {
    "epithelial": ((3.1, 4.0), (0.65, 0.85), 0.04, (1.00, 1.25), 0.25, 0.20),
    "myoepithelial": ((3.8, 5.0), (0.30, 0.42), 0.03, (1.10, 1.30), 0.0, 0.12),
    "fibroblast": ((4.0, 7.0), (0.20, 0.33), 0.04, (1.10, 1.35), 0.0, 0.12),
    "lymphocyte": ((2.5, 3.4), (0.85, 1.00), 0.03, (1.60, 1.90), 0.0, 0.08),
    "tumour": ((4.6, 8.0), (0.60, 0.95), 0.13, (1.30, 1.80), 0.40, 0.30),
}
_HV, _EV = (v / np.linalg.norm(v) for v in np.asarray(rgb_from_hed[:2], dtype=np.float32))


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


def _upsample(a, shape, step):
    """Linear upsampling of a coarse grid (spacing ``step`` px) to ``shape`` (C-ordered)."""
    c = np.arange(shape[1]) / step
    c0 = np.minimum(c.astype(int), a.shape[1] - 2)
    fc = (c - c0).astype(np.float32)
    a = a[:, c0] * (1 - fc) + a[:, c0 + 1] * fc
    r = np.arange(shape[0]) / step
    r0 = np.minimum(r.astype(int), a.shape[0] - 2)
    fr = (r - r0)[:, None].astype(np.float32)
    return np.ascontiguousarray(a[r0] * (1 - fr) + a[r0 + 1] * fr)


def _noise(rng, shape, sigma):
    """White noise smoothed by a Gaussian (``sigma`` per axis), scaled to unit variance."""
    a = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=3)
    for sd in np.broadcast_to(sigma, (2,)):  # exact std of the filter, not of the sample
        w = np.exp(-0.5 * (np.arange(-int(3 * sd + 0.5), int(3 * sd + 0.5) + 1) / sd) ** 2)
        a /= np.sqrt((w**2).sum()) / w.sum()
    return a


def _smooth_noise(rng, shape, sigma):
    """Gaussian random field with unit std and correlation length ``sigma`` px (float32)."""
    step = max(1.0, sigma / 3.0)
    small = (int(np.ceil((shape[0] - 1) / step)) + 2, int(np.ceil((shape[1] - 1) / step)) + 2)
    a = _noise(rng, small, sigma / step)
    return _upsample(a, shape, step) if step > 1 else a[: shape[0], : shape[1]]


def _harmonics(rng, n, scale):
    """Random Fourier perturbation of a radius: orders 2..n+1, amplitudes and phases."""
    k = np.arange(2, n + 2)
    return k, scale * rng.uniform(-1, 1, n) / (k - 1) ** 1.5, rng.uniform(0, 2 * np.pi, n)


def _radius(t, harm):
    k, amps, ph = harm
    return 1.0 + (amps * np.cos(np.multiply.outer(t, k) + ph)).sum(-1)


def _radius_xy(x, y, harm):
    """``_radius`` at the polar angle of (x, y), via powers of the unit complex number."""
    _, amps, ph = harm
    u = (x + 1j * y).astype(np.complex64)
    u /= np.abs(u) + 1e-12
    p, out = u * u, np.zeros(u.shape, np.complex64)
    for c in (amps * np.exp(1j * ph)).astype(np.complex64):
        out += c * p
        p = p * u
    return 1.0 + out.real


def _polar(shape, centre, rmax):
    """Bounding-box slices plus row/col offsets and distance to ``centre`` inside them."""
    r_lo, c_lo = max(int(centre[0] - rmax), 0), max(int(centre[1] - rmax), 0)
    r_hi = min(int(centre[0] + rmax) + 2, shape[0])
    c_hi = min(int(centre[1] + rmax) + 2, shape[1])
    dr = np.arange(r_lo, r_hi, dtype=np.float32)[:, None] - centre[0]
    dc = np.arange(c_lo, c_hi, dtype=np.float32)[None, :] - centre[1]
    return (slice(r_lo, r_hi), slice(c_lo, c_hi)), dr, dc, np.hypot(dr, dc)


class _Canvas:
    """Collects non-overlapping nuclei: instance image, normalised radius and attributes."""

    def __init__(self, shape, px, rng):
        self.shape, self.s, self.rng = shape, 1.0 / px, rng
        self.labels = np.zeros(shape, np.int32)
        self.rho = np.zeros(shape, np.float32)
        self.occ = np.zeros(shape, bool)
        self.nuclei = []

    def add(self, kind, centre, angle, malignant=False, boundary=False, margin=0.8, size=1.0):
        """Draw one nucleus (sizes in um, ``angle`` of the long axis); None if it collides."""
        rng, s, (h, w) = self.rng, self.s, self.shape
        (a_lo, a_hi), (q_lo, q_hi), rough, (i_lo, i_hi), rim, tex = _KIND_PARAMS[kind]
        a = rng.uniform(a_lo, a_hi) * s * size
        b = a * rng.uniform(q_lo, q_hi)
        harm = _harmonics(rng, 4, rough)
        inten, nucleolus = rng.uniform(i_lo, i_hi), rng.random() < 0.5
        r0, c0 = centre
        if not (0 <= r0 < h and 0 <= c0 < w) or self.occ[int(r0), int(c0)]:
            return None
        t = np.linspace(0, 2 * np.pi, int(np.clip(2 * np.pi * a / 1.5, 16, 64)), endpoint=False)
        rad = _radius(t, harm)
        x, y = a * np.cos(t) * rad, b * np.sin(t) * rad
        sn, cs = np.sin(angle), np.cos(angle)
        pts = np.stack([r0 + x * sn + y * cs, c0 + x * cs - y * sn], 1)
        ri, ci = pts.astype(int).T
        vis = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
        if self.occ[ri[vis], ci[vis]].any():
            return None
        full = 0.5 * abs(np.dot(x[1:], y[:-1]) - np.dot(y[1:], x[:-1]) + x[0] * y[-1] - y[0] * x[-1])
        m = margin * s
        ext = a * (1 + np.abs(harm[1]).sum()) + m + 1
        sl = (slice(max(int(r0 - ext), 0), min(int(r0 + ext) + 2, h)),
              slice(max(int(c0 - ext), 0), min(int(c0 + ext) + 2, w)))
        dr = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] - np.float32(r0)
        dc = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] - np.float32(c0)
        xu, yu = dr * sn + dc * cs, dr * cs - dc * sn
        rad = _radius_xy(xu / a, yu / b, harm)
        rho = np.hypot(xu / a, yu / b) / rad
        inside = rho <= 1
        occ = self.occ[sl]
        if inside.sum() < max(3, 0.5 * full) or (occ & inside).any():
            return None
        occ |= np.hypot(xu / (a + m), yu / (b + m)) <= rad
        self.rho[sl][inside] = rho[inside]
        self.labels[sl][inside] = len(self.nuclei) + 1
        self.nuclei.append((pts, kind, malignant, boundary, full, inten, rim, tex, nucleolus))
        return a, b

    def scatter(self, kind, allowed, n, angle=None, spacing=None, **kw):
        """Try ``n`` nuclei at random pixels where ``allowed`` (or, with ``spacing`` in um, at
        the allowed nodes of a jittered hexagonal lattice); returns the placed ones."""
        rng, (h, w), placed = self.rng, self.shape, []
        if spacing is None:
            idx = np.flatnonzero(allowed)
            pos = np.stack(np.divmod(rng.choice(idx, n), w), 1) + rng.random((n, 2)) if idx.size else []
        else:
            d = spacing * self.s
            r, c = np.mgrid[0 : h : d * 0.866, 0:w:d]
            c = c + (np.arange(r.shape[0]) % 2)[:, None] * d / 2
            pos = np.stack([r.ravel(), c.ravel()], 1) + rng.normal(0, 0.18 * d, (r.size, 2))
            pos = pos[(pos >= 0).all(1) & (pos[:, 0] < h) & (pos[:, 1] < w)]
            pos = rng.permutation(pos[allowed[pos[:, 0].astype(int), pos[:, 1].astype(int)]])
        for p in pos:
            ang = rng.uniform(0, np.pi) if angle is None else angle + rng.normal(0, 0.3)
            ab = self.add(kind, p, ang, **kw)
            if ab is not None:
                placed.append((p[0], p[1], ab, ang))
        return placed

    def finalise(self):
        """Drop hidden nuclei, relabel 1..N and compute visible centroids."""
        n, (h, w) = len(self.nuclei), self.shape
        flat = self.labels.ravel()
        idx = np.flatnonzero(flat)
        lab = flat[idx]
        cnt = np.bincount(lab, minlength=n + 1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            cen = np.stack([np.bincount(lab, idx // w, n + 1), np.bincount(lab, idx % w, n + 1)], 1)
            cen /= cnt[:, None]
        full = np.array([0] + [nu[4] for nu in self.nuclei], float)
        ok = cnt >= np.maximum(3, 0.5 * full)
        ok[0] = False
        ri = np.clip(np.nan_to_num(np.round(cen)), 0, [h - 1, w - 1]).astype(int)
        ok &= self.labels[ri[:, 0], ri[:, 1]] == np.arange(n + 1)
        lut = np.zeros(n + 1, np.int32)
        lut[ok] = np.arange(1, ok.sum() + 1)
        self.labels = lut[self.labels]
        self.nuclei = [nu for nu, k in zip(self.nuclei, ok[1:]) if k]
        return cen[ok]


def _ring(cv, centre, r0, harm, kind, inset, gap, boundary=True, prob=1.0):
    """Place nuclei of ``kind`` evenly by arc length ``inset`` px inside a star-shaped outline,
    at least ``gap`` px apart (myoepithelium tangential, epithelium radial); closed ring."""
    t = cv.rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, 721)
    rad = r0 * _radius(t, harm) - inset
    pts = np.stack([centre[0] + rad * np.sin(t), centre[1] + rad * np.cos(t)], 1)
    arc = np.r_[0, np.cumsum(np.hypot(*np.diff(pts, axis=0).T))]
    grad = np.gradient(pts, axis=0)
    tangent = np.arctan2(grad[:, 0], grad[:, 1])
    (_, a_hi), (_, q_hi), *_ = _KIND_PARAMS[kind]
    flat = kind == "myoepithelial"
    n = max(3, int(arc[-1] / (2 * a_hi * (1 if flat else q_hi) * cv.s + gap)))
    for i in np.searchsorted(arc, np.arange(n) * arc[-1] / n):
        for size in (1.0, 0.8, 0.6) if cv.rng.random() < prob else ():  # shrink if it collides
            if cv.add(kind, pts[i], tangent[i] + np.pi / 2 * (not flat), boundary=boundary,
                      margin=0.3, size=size):
                break


def _clip(poly, lim):
    """Clip a polygon to the image, -0.5 <= coordinate <= lim - 0.5 (Sutherland-Hodgman)."""
    for axis in (0, 1):
        for bound, sign in ((-0.5, -1.0), (lim[axis] - 0.5, 1.0)):
            inside = sign * (poly[:, axis] - bound) <= 0
            if inside.all():
                continue
            out = []
            for p, q, p_in, q_in in zip(poly, np.roll(poly, -1, 0), inside, np.roll(inside, -1)):
                if p_in:
                    out.append(p)
                if p_in != q_in:
                    out.append(p + (bound - p[axis]) / (q[axis] - p[axis]) * (q - p))
            poly = np.array(out)
    return poly


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
            size = (rng.uniform(0.07, 0.16) * r0 + 3 * s) * _radius_xy(x, y, _harmonics(rng, 3, 0.3))
            lumen |= np.hypot(x, y) < size
    mask[sl] |= d < rad
    z["epi"][sl] |= (d < rad) & ~inner
    z["lumen"][sl] |= lumen & inner
    z["cyto"][sl] |= inner & ~lumen
    z["bm"][sl] |= (d >= rad) & (d < rad + 2 * s)
    _ring(cv, centre, r0, harm, "myoepithelial", 2.2 * s, 0.8 * s)
    room = np.zeros(cv.shape, bool)
    room[sl] = (d < rad - 7 * s) & ~ndi.binary_dilation(lumen, iterations=int(3 * s))
    cells = cv.scatter("tumour", room, 0, spacing=rng.uniform(10.5, 12.5), malignant=True,
                       margin=0.5)
    cells += cv.scatter("tumour", room, int(room.sum() / (150 * s * s)) + 5, malignant=True,
                        margin=0.5)
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


def _stroma(rng, shape, px, angle):
    """Eosin OD of fibrous stroma: wavy bundles, fine fibrils, white clefts (float32)."""
    st = max(1, round(0.8 / px))
    (h, w), (du, dv) = ((shape[0] - 1) // st + 2, (shape[1] - 1) // st + 2), (2.0, 0.4)
    diag = np.hypot(h, w) * st * px + 150  # um, with room for the warp
    n_v, n_u = int(diag / dv), int(diag / du)
    tex = [_noise(rng, (n_v, n_u), sig)
           for sig in ((1.6 / dv, 12 / du), (0.45 / dv, 5 / du), (2.2 / dv, 14 / du))]
    y = ((np.arange(h, dtype=np.float32) - h / 2) * st * px)[:, None]
    x = ((np.arange(w, dtype=np.float32) - w / 2) * st * px)[None, :]
    warp = 20 * _smooth_noise(rng, (h, w), 50 / px / st) + 3 * _smooth_noise(rng, (h, w), 9 / px / st)
    coords = [(y * np.cos(angle) - x * np.sin(angle) + warp) / dv + n_v / 2,
              np.broadcast_to((x * np.cos(angle) + y * np.sin(angle)) / du + n_u / 2, (h, w))]
    bun, fib, gap = (ndi.map_coordinates(f, coords, order=1) for f in tex)
    level = 0.8 + 0.2 * _smooth_noise(rng, (h, w), 40 / px / st)
    cleft = np.clip((gap - 1.2) / 0.5, 0, 1) + 0.5 * np.exp(-((bun / 0.15) ** 2))
    eosin = level * (0.62 + 0.22 * np.tanh(1.2 * bun) + 0.12 * fib) * (1 - 0.9 * np.minimum(cleft, 1))
    return _upsample(eosin, shape, st) if st > 1 else eosin[: shape[0], : shape[1]].copy()


def _render(rng, cv, z, cen, px, angle):
    shape = cv.shape
    eosin = _stroma(rng, shape, px, angle)
    hema = 0.02 * eosin
    var = _smooth_noise(rng, shape, 8 / px)
    secretion = np.clip(_smooth_noise(rng, shape, 6 / px) - 1.5, 0, 1)
    eosin[z["bm"]] += 0.35
    for key, e0, h0 in (("epi", 0.32, 0.16), ("cyto", 0.42, 0.3), ("lumen", 0.03, 0.01)):
        m = z[key]
        eosin[m] = e0 + 0.05 * var[m] + (0.35 * secretion[m] if key == "lumen" else 0)
        hema[m] = h0 + 0.03 * var[m]
    idx = np.flatnonzero(cv.labels)
    lab = cv.labels.ravel()[idx]
    lut = np.array([(0, 0, 0)] + [nu[5:8] for nu in cv.nuclei], np.float32).T
    chrom = _noise(rng, shape, 0.45 / px).ravel()[idx]
    chrom += 1.5 * _smooth_noise(rng, shape, 1.2 / px).ravel()[idx]
    rho = np.clip(cv.rho.ravel()[idx], 0, 1)
    nuc = lut[0][lab] * (1 + lut[1][lab] * (rho**4 - 0.3)) * (1 + lut[2][lab] * chrom / 1.8)
    hema.ravel()[idx] = 0.3 * hema.ravel()[idx] + np.maximum(nuc, 0.1)
    eosin.ravel()[idx] = 0.5 * eosin.ravel()[idx] + 0.15
    for i, nu in enumerate(cv.nuclei):
        if nu[1] == "tumour" and nu[8]:
            off = rng.normal(0, 0.8 / px, 2)
            rr, cc = disk(cen[i] + off, rng.uniform(0.6, 1.1) / px, shape=shape)
            hema[rr, cc] += 0.5 * (cv.labels[rr, cc] == i + 1)
    vr = (np.linspace(-1, 1, shape[0], dtype=np.float32) ** 2)[:, None]
    od = (0.04 + 0.05 * (vr + np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :] ** 2))
    od = np.repeat(od[..., None], 3, axis=2)  # vignette, then stain by stain (Beer-Lambert)
    for m, sig, vec in ((hema, 0.5, _HV), (eosin, 0.4, _EV)):
        m = ndi.gaussian_filter(m, sig / px, truncate=3) * rng.uniform(0.85, 1.15)
        m += 0.015 * rng.standard_normal(shape, dtype=np.float32)
        od += np.maximum(m, 0)[..., None] * vec
    np.exp(-od, out=od)
    od *= 255
    od += 0.5
    return od.astype(np.uint8)


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
        k = max(int(rng.integers(1, 2 + h * w * px * px // 180_000)), int(np.ceil(frac * h * w / cap)))
        for i in range(k):
            r0 = min(np.sqrt(max(frac * h * w - mask.sum(), 0) / (np.pi * (k - i))), 0.42 * min(h, w))
            for tries in range(200):
                r0 *= 0.93 if tries % 25 == 24 else 1.0
                harm = _harmonics(rng, 3, 0.12)
                rmax = r0 * (1 + np.abs(harm[1]).sum()) + 3 * s
                c = rng.uniform([rmax, rmax], [h - rmax, w - rmax]) if rmax < min(h, w) / 2 else None
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
        band = np.abs(_smooth_noise(rng, shape, 14 * s)) + np.maximum(
            _smooth_noise(rng, shape, 10 * s) - 1.0, 0) * -3
        room = mask & ~z["epi"]
        cut = np.quantile(band[room][::7], [0.4, 0.6]) if room.any() else (0, 0)
        cells = cv.scatter("tumour", room & (band < cut[0]), 0, spacing=rng.uniform(11, 13),
                           malignant=True)
        cells += cv.scatter("tumour", room & (band < cut[0]), int(room.sum() / (150 * s * s)) + 5,
                            malignant=True)
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
