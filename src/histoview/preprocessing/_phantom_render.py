"""Rendering of the synthetic H&E phantom (:mod:`histoview.preprocessing.phantom`).

Smooth Gaussian random fields (generated on coarse grids and upsampled, for speed), the
eosin texture of fibrous stroma, and the colour of the drawn tissue and nuclei:
haematoxylin and eosin optical densities (natural log, per unit Ruifrok & Johnston vector
as in ``skimage.color``) combined by Beer-Lambert, with a per image stain strength
(+-15 %), slight blur, sensor noise and a faint vignette.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb_from_hed
from skimage.draw import disk

_HV, _EV = (v / np.linalg.norm(v) for v in np.asarray(rgb_from_hed[:2], dtype=np.float32))
#: stroma texture: lattice spacing across (v) and along (u) the fibres, um, and the
#: correlation lengths (across, along; um) of the bundle, fibril and cleft fields
_FIBRE_STEP_UM = (0.4, 2.0)
_FIBRE_SIGMAS_UM = ((1.6, 12), (0.45, 5), (2.2, 14))
#: blur of the haematoxylin and eosin maps (um): the optics
_STAIN_BLUR_UM = (0.5, 0.4)


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
    return _smoothed(rng.standard_normal(shape, dtype=np.float32), sigma)


def _smoothed(white, sigma):
    """``white`` (unit-variance white noise) smoothed by a Gaussian (``sigma`` px per axis),
    scaled back to unit variance by the filter's exact gain."""
    a = ndi.gaussian_filter(white, sigma, truncate=3)
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


def _stroma(rng, shape, px, angle):
    """Eosin OD of fibrous stroma: wavy bundles, fine fibrils, white clefts (float32)."""
    st = max(1, round(0.8 / px))
    (h, w), (dv, du) = ((shape[0] - 1) // st + 2, (shape[1] - 1) // st + 2), _FIBRE_STEP_UM
    diag = np.hypot(h, w) * st * px + 150  # um, with room for the warp
    n_v, n_u = int(diag / dv), int(diag / du)
    tex = [_noise(rng, (n_v, n_u), (sv / dv, su / du)) for sv, su in _FIBRE_SIGMAS_UM]
    y = ((np.arange(h, dtype=np.float32) - h / 2) * st * px)[:, None]
    x = ((np.arange(w, dtype=np.float32) - w / 2) * st * px)[None, :]
    warp = 20 * _smooth_noise(rng, (h, w), 50 / px / st) + 3 * _smooth_noise(
        rng, (h, w), 9 / px / st
    )
    coords = [
        (y * np.cos(angle) - x * np.sin(angle) + warp) / dv + n_v / 2,
        np.broadcast_to((x * np.cos(angle) + y * np.sin(angle)) / du + n_u / 2, (h, w)),
    ]
    bun, fib, gap = (ndi.map_coordinates(f, coords, order=1) for f in tex)
    eosin = _stroma_eosin(bun, fib, gap, 0.8 + 0.2 * _smooth_noise(rng, (h, w), 40 / px / st))
    return _upsample(eosin, shape, st) if st > 1 else eosin[: shape[0], : shape[1]].copy()


def _stroma_eosin(bun, fib, gap, level):
    """Eosin OD of stroma from the bundle, fibril and cleft textures and the local level."""
    cleft = np.clip((gap - 1.2) / 0.5, 0, 1) + 0.5 * np.exp(-((bun / 0.15) ** 2))
    return (
        level * (0.62 + 0.22 * np.tanh(1.2 * bun) + 0.12 * fib) * (1 - 0.9 * np.minimum(cleft, 1))
    )


def _fill_tissue(eosin, hema, z, var, secretion):
    """Optical densities of basement membrane, epithelium, tumour cytoplasm and lumina
    (``z``: their masks; ``var``, ``secretion``: smooth fields), in place."""
    eosin[z["bm"]] += 0.35
    for key, e0, h0 in (("epi", 0.32, 0.16), ("cyto", 0.42, 0.3), ("lumen", 0.03, 0.01)):
        m = z[key]
        eosin[m] = e0 + 0.05 * var[m] + (0.35 * secretion[m] if key == "lumen" else 0)
        hema[m] = h0 + 0.03 * var[m]


def _shade_nuclei(hema, eosin, labels, rho, nuclei, idx, chrom):
    """Nuclei's optical densities at the flat pixel indices ``idx`` (where ``labels`` > 0):
    per-nucleus intensity, darker rim (``rho``: normalised radius) and chromatin texture
    (``chrom`` at ``idx``), in place."""
    lab = labels.ravel()[idx]
    lut = np.array([(0, 0, 0)] + [nu[5:8] for nu in nuclei], np.float32).T
    rho = np.clip(rho.ravel()[idx], 0, 1)
    nuc = lut[0][lab] * (1 + lut[1][lab] * (rho**4 - 0.3)) * (1 + lut[2][lab] * chrom / 1.8)
    hema.ravel()[idx] = 0.3 * hema.ravel()[idx] + np.maximum(nuc, 0.1)
    eosin.ravel()[idx] = 0.5 * eosin.ravel()[idx] + 0.15


def _nucleolus(hema, labels, label, centre, radius):
    """A dark nucleolus (disc of ``radius`` px at ``centre``) inside nucleus ``label``."""
    rr, cc = disk(centre, radius, shape=labels.shape)
    hema[rr, cc] += 0.5 * (labels[rr, cc] == label)


def _add_stain(od, m, blur_px, strength, noise, vec):
    """Beer-Lambert: add one stain's blurred, scaled, noisy map ``m`` times its unit OD
    vector ``vec`` to the (H, W, 3) optical density ``od``."""
    m = ndi.gaussian_filter(m, blur_px, truncate=3) * strength
    m += 0.015 * noise
    od += np.maximum(m, 0)[..., None] * vec


def _to_rgb8(od):
    """(H, W, 3) optical density (natural log) to uint8 RGB; overwrites ``od``."""
    np.exp(-od, out=od)
    od *= 255
    od += 0.5
    return od.astype(np.uint8)


def _render(rng, cv, z, cen, px, angle):
    shape = cv.shape
    eosin = _stroma(rng, shape, px, angle)
    hema = 0.02 * eosin
    var = _smooth_noise(rng, shape, 8 / px)
    secretion = np.clip(_smooth_noise(rng, shape, 6 / px) - 1.5, 0, 1)
    _fill_tissue(eosin, hema, z, var, secretion)
    idx = np.flatnonzero(cv.labels)
    chrom = _noise(rng, shape, 0.45 / px).ravel()[idx]
    chrom += 1.5 * _smooth_noise(rng, shape, 1.2 / px).ravel()[idx]
    _shade_nuclei(hema, eosin, cv.labels, cv.rho, cv.nuclei, idx, chrom)
    for i, nu in enumerate(cv.nuclei):
        if nu[1] == "tumour" and nu[8]:
            off = rng.normal(0, 0.8 / px, 2)
            _nucleolus(hema, cv.labels, i + 1, cen[i] + off, rng.uniform(0.6, 1.1) / px)
    vr = (np.linspace(-1, 1, shape[0], dtype=np.float32) ** 2)[:, None]
    od = 0.04 + 0.05 * (vr + np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :] ** 2)
    od = np.repeat(od[..., None], 3, axis=2)  # vignette, then stain by stain (Beer-Lambert)
    for m, sig, vec in ((hema, _STAIN_BLUR_UM[0], _HV), (eosin, _STAIN_BLUR_UM[1], _EV)):
        strength = rng.uniform(0.85, 1.15)
        _add_stain(od, m, sig / px, strength, rng.standard_normal(shape, dtype=np.float32), vec)
    return _to_rgb8(od)
