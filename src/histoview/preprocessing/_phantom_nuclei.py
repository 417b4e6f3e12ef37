"""Nuclei of the synthetic H&E phantom (:mod:`histoview.preprocessing.phantom`).

A nucleus is a perturbed ellipse: semi-axes from its kind's ranges (micrometres, in
``_KIND_PARAMS``), its radius multiplied by a random Fourier series (:func:`_harmonics`,
orders 2..5), rasterised from the same curve as its outline polygon. :class:`_Canvas`
places nuclei without overlap (a colliding placement is rejected), keeps the instance
image, the normalised radius of every pixel (for shading) and each nucleus's attributes,
and finally drops nuclei less than half visible. :func:`_ring` lays nuclei along a gland
outline by arc length; :func:`_clip` clips an outline to the image (Sutherland-Hodgman).
Coordinates are (row, col) pixels.
"""

from __future__ import annotations

import numpy as np

# long semi-axis (um), short/long ratio, outline roughness, haematoxylin OD, rim, texture
_KIND_PARAMS = {
    "epithelial": ((3.1, 4.0), (0.65, 0.85), 0.04, (1.00, 1.25), 0.25, 0.20),
    "myoepithelial": ((3.8, 5.0), (0.30, 0.42), 0.03, (1.10, 1.30), 0.0, 0.12),
    "fibroblast": ((4.0, 7.0), (0.20, 0.33), 0.04, (1.10, 1.35), 0.0, 0.12),
    "lymphocyte": ((2.5, 3.4), (0.85, 1.00), 0.03, (1.60, 1.90), 0.0, 0.08),
    "tumour": ((4.6, 8.0), (0.60, 0.95), 0.13, (1.30, 1.80), 0.40, 0.30),
}


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


def _nucleus_shape(rng, kind, s, size=1.0):
    """Random shape of a nucleus of ``kind``: semi-axes a, b (px, ``s`` px per um, times
    ``size``), outline harmonics, haematoxylin intensity and whether it shows a nucleolus."""
    (a_lo, a_hi), (q_lo, q_hi), rough, (i_lo, i_hi), _rim, _tex = _KIND_PARAMS[kind]
    a = rng.uniform(a_lo, a_hi) * s * size
    b = a * rng.uniform(q_lo, q_hi)
    harm = _harmonics(rng, 4, rough)
    return a, b, harm, rng.uniform(i_lo, i_hi), rng.random() < 0.5


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
        shape = _nucleus_shape(self.rng, kind, self.s, size)
        return self.place(kind, centre, angle, shape, malignant, boundary, margin)

    def place(self, kind, centre, angle, shape, malignant=False, boundary=False, margin=0.8):
        """Draw a nucleus of the given :func:`_nucleus_shape`; None if it collides."""
        s, (h, w) = self.s, self.shape
        a, b, harm, inten, nucleolus = shape
        rim, tex = _KIND_PARAMS[kind][4:]
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
        full = 0.5 * abs(
            np.dot(x[1:], y[:-1]) - np.dot(y[1:], x[:-1]) + x[0] * y[-1] - y[0] * x[-1]
        )
        m = margin * s
        ext = a * (1 + np.abs(harm[1]).sum()) + m + 1
        sl = (
            slice(max(int(r0 - ext), 0), min(int(r0 + ext) + 2, h)),
            slice(max(int(c0 - ext), 0), min(int(c0 + ext) + 2, w)),
        )
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
            pos = (
                np.stack(np.divmod(rng.choice(idx, n), w), 1) + rng.random((n, 2))
                if idx.size
                else []
            )
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
            if cv.add(
                kind,
                pts[i],
                tangent[i] + np.pi / 2 * (not flat),
                boundary=boundary,
                margin=0.3,
                size=size,
            ):
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
