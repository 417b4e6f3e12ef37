"""Tileable random fields for the phantom slide (:mod:`histoview.preprocessing.phantom_slide`).

The phantom's noise (:mod:`histoview.preprocessing._phantom_render`) is drawn per image; a
slide is rendered block by block, so every field here is a function of *global* pixel
coordinates: the same pixel gets the same value whichever block asks, and features continue
across block and tile borders.

* :func:`_white`: unit white noise on an integer lattice, cut from 128 x 128 chunks that each
  have their own generator seeded by (slide seed, field key, chunk row, chunk column).
* :class:`_Field`: a Gaussian random field of unit variance and correlation length ``sigma``
  pixels, like ``_smooth_noise``: white noise on a lattice of spacing ``step`` px, smoothed by
  a Gaussian of ``sigma / step`` lattice units (``_smoothed``, computed with a halo of the
  filter's radius, so a window's values do not depend on the window), then interpolated
  bilinearly at pixel coordinates.
* :class:`_StromaTexture`: the eosin of fibrous stroma (``_stroma``'s model: bundle, fibril
  and cleft textures on a lattice rotated along the fibres, warped by smooth noise), with the
  textures as global fields of the rotated lattice.

Interpolation weights come from the fractional part of the global coordinate and indices from
its integer part, never from a window-relative coordinate, so values agree bit for bit.
"""

from __future__ import annotations

import numpy as np

from histoview.preprocessing._phantom_render import (
    _FIBRE_SIGMAS_UM,
    _FIBRE_STEP_UM,
    _smoothed,
    _stroma_eosin,
    _upsample,
)

_CHUNK = 128
_SQRT12 = np.float32(np.sqrt(12.0))
_OFFSET = 1 << 40  # lattice indices may be negative; seed words must not


def _white(seed: int, key: int, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
    """Unit-variance white noise (float32) on lattice rows ``i0..i1-1`` and columns
    ``j0..j1-1``: uniform, 5x cheaper to draw than normal; every use but the sensor noise
    smooths it, which makes it Gaussian."""
    out = np.empty((i1 - i0, j1 - j0), np.float32)
    c = _CHUNK
    for ci in range(i0 // c, (i1 - 1) // c + 1):
        r_lo, r_hi = max(i0, ci * c), min(i1, (ci + 1) * c)
        for cj in range(j0 // c, (j1 - 1) // c + 1):
            c_lo, c_hi = max(j0, cj * c), min(j1, (cj + 1) * c)
            rng = np.random.default_rng((seed, key, ci + _OFFSET, cj + _OFFSET))
            chunk = rng.random((c, c), dtype=np.float32)
            chunk -= 0.5
            chunk *= _SQRT12
            out[r_lo - i0 : r_hi - i0, c_lo - j0 : c_hi - j0] = chunk[
                r_lo - ci * c : r_hi - ci * c, c_lo - cj * c : c_hi - cj * c
            ]
    return out


def _bilinear(lat: np.ndarray, i: np.ndarray, fi: np.ndarray, j: np.ndarray, fj: np.ndarray):
    """Bilinear samples of ``lat`` on the grid ``i + fi`` (rows) x ``j + fj`` (columns):
    ``i``, ``j`` integer indices into ``lat``, ``fi``, ``fj`` float32 fractions."""
    a = lat[:, j] * (1 - fj) + lat[:, j + 1] * fj
    return a[i] * (1 - fi)[:, None] + a[i + 1] * fi[:, None]


class _Field:
    """Gaussian random field (unit std, correlation length ``sigma`` px, per axis if a pair)
    over global pixel coordinates; ``key`` tells a slide's fields apart."""

    def __init__(self, seed: int, key: int, sigma, step: int | None = None):
        sig = np.broadcast_to(np.asarray(sigma, float), (2,))
        self.seed, self.key = int(seed), int(key)
        self.step = int(step or max(1, int(sig.min() / 3.0)))
        self.sigma = tuple(float(v) for v in sig / self.step)  # in lattice units
        self.halo = tuple(int(3 * v + 0.5) + 1 for v in self.sigma)

    def lattice(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """Smoothed values on lattice rows ``i0..i1-1`` and columns ``j0..j1-1``."""
        if max(self.sigma) == 0:
            return _white(self.seed, self.key, i0, i1, j0, j1)
        hr, hc = self.halo
        a = _smoothed(_white(self.seed, self.key, i0 - hr, i1 + hr, j0 - hc, j1 + hc), self.sigma)
        return a[hr : hr + i1 - i0, hc : hc + j1 - j0]

    def grid(self, rows, cols) -> np.ndarray:
        """Values (float32, ``(len(rows), len(cols))``) at global pixel rows x columns."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        if self.step == 1 and rows.dtype.kind in "iu" and cols.dtype.kind in "iu":
            i0, j0 = int(rows.min()), int(cols.min())
            lat = self.lattice(i0, int(rows.max()) + 1, j0, int(cols.max()) + 1)
            return lat[np.ix_(rows - i0, cols - j0)]
        (i, fi), (j, fj) = (_split(v / self.step) for v in (rows, cols))
        i0, j0 = int(i.min()), int(j.min())
        lat = self.lattice(i0, int(i.max()) + 2, j0, int(j.max()) + 2)
        return _bilinear(lat, i - i0, fi, j - j0, fj)

    def window(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Values on the pixels ``r0..r0+h-1`` x ``c0..c0+w-1``."""
        return self.grid(np.arange(r0, r0 + h), np.arange(c0, c0 + w))

    def points(self, rr, cc) -> np.ndarray:
        """Values at points (global pixel coordinates, any floats), float32."""
        rr, cc = np.asarray(rr, float), np.asarray(cc, float)
        if rr.size == 0:
            return np.zeros(0, np.float32)
        (i, fi), (j, fj) = (_split(v / self.step) for v in (rr, cc))
        i0, j0 = int(i.min()), int(j.min())
        lat = self.lattice(i0, int(i.max()) + 2, j0, int(j.max()) + 2)
        i, j = i - i0, j - j0
        top = lat[i, j] * (1 - fj) + lat[i, j + 1] * fj
        bottom = lat[i + 1, j] * (1 - fj) + lat[i + 1, j + 1] * fj
        return top * (1 - fi) + bottom * fi


def _split(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer part (int64) and fraction (float32) of global lattice coordinates."""
    q = np.asarray(q, float)
    i = np.floor(q)
    return i.astype(np.int64), (q - i).astype(np.float32)


class _StromaTexture:
    """Eosin optical density of fibrous stroma at global pixel coordinates (``_stroma``'s
    model): fibres along ``angle`` (radians), warped across by 20 um x noise(50 um) +
    3 um x noise(9 um), intensity level 0.8 + 0.2 x noise(40 um); evaluated on a grid of
    ``round(0.8 um / px)`` px and upsampled linearly, as the phantom does."""

    def __init__(self, seed: int, px: float, angle: float, key: int = 100):
        self.px, self.angle = float(px), float(angle)
        self.st = max(1, round(0.8 / px))
        dv, du = _FIBRE_STEP_UM
        self.tex = [
            _Field(seed, key + k, (sv / dv, su / du), step=1)
            for k, (sv, su) in enumerate(_FIBRE_SIGMAS_UM)
        ]
        self.warp = (_Field(seed, key + 10, 50 / px), _Field(seed, key + 11, 9 / px))
        self.level = _Field(seed, key + 12, 40 / px)

    def window(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Eosin OD (float32, (h, w)) of the pixels from (r0, c0); ``r0``, ``c0`` must be
        multiples of the evaluation step (``self.st``)."""
        st, px = self.st, self.px
        if r0 % st or c0 % st:
            raise ValueError(f"stroma window must start on a multiple of {st} px")
        rows = r0 + st * np.arange((h - 1) // st + 2)
        cols = c0 + st * np.arange((w - 1) // st + 2)
        warp = 20 * self.warp[0].grid(rows, cols) + 3 * self.warp[1].grid(rows, cols)
        y, x = (rows * px)[:, None], (cols * px)[None, :]
        dv, du = _FIBRE_STEP_UM
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        v = (y * cos - x * sin + warp) / dv
        u = np.broadcast_to((x * cos + y * sin) / du, v.shape)
        (iv, fv), (iu, fu) = _split(v), _split(u)
        v0, u0 = int(iv.min()), int(iu.min())
        iv, iu = iv - v0, iu - u0
        samples = []
        for field in self.tex:
            lat = field.lattice(v0, v0 + int(iv.max()) + 2, u0, u0 + int(iu.max()) + 2)
            top = lat[iv, iu] * (1 - fu) + lat[iv, iu + 1] * fu
            bottom = lat[iv + 1, iu] * (1 - fu) + lat[iv + 1, iu + 1] * fu
            samples.append(top * (1 - fv) + bottom * fv)
        level = 0.8 + 0.2 * self.level.grid(rows, cols)
        eosin = _stroma_eosin(*samples, level).astype(np.float32)
        return _upsample(eosin, (h, w), st) if st > 1 else eosin[:h, :w].copy()
