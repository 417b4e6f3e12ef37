"""Colour-model conversions of a stored TIFF block, ``(h, w[, s])`` samples last, to what
histoview shows (which model gets which conversion: :func:`histoview.io.tiff_layout.tiff_layout`):

* :func:`bilevel`: 1-bit samples to 0 / 255 ``uint8`` (Pillow's mode ``"1"``);
* :func:`invert`: ``WhiteIsZero`` gray to black-is-zero (``max - v``);
* :func:`palette_to_rgb`: palette indices through the ColorMap to 8-bit RGB;
* :func:`unpremultiply`: associated (premultiplied) alpha to straight alpha;
* :func:`cmyk_to_rgb`: the naive, ICC-free rule Pillow and Adobe use without a profile,
  ``R = max (1 - C/max)(1 - K/max)``, G with M and B with Y;
* :func:`ycbcr_to_rgb`: TIFF 6.0 section 21 (YCbCrCoefficients, ReferenceBlackWhite).

Each is a pure NumPy function of the block (parameters bound with :func:`functools.partial`);
:func:`chain` composes them into one.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "bilevel",
    "chain",
    "cmyk_to_rgb",
    "invert",
    "palette_to_rgb",
    "take_samples",
    "unpremultiply",
    "ycbcr_to_rgb",
]


def chain(steps):
    """One function applying ``steps`` in order (the step itself when there is one)."""
    if len(steps) == 1:
        return steps[0]
    return functools.partial(_apply_all, steps=tuple(steps))


def _apply_all(block, steps):
    for step in steps:
        block = step(block)
    return block


def take_samples(block, index):
    return block[..., index]


def bilevel(block, white_is_zero: bool):
    on = np.logical_not(block) if white_is_zero else block
    return on.astype(np.uint8) * np.uint8(255)


def invert(block, maxval: int):
    return (maxval - block.astype(np.int64)).clip(0, maxval).astype(block.dtype)


def palette_to_rgb(block, table):
    return table[block]


def unpremultiply(block):
    info = np.iinfo(block.dtype) if block.dtype.kind in "ui" else None
    top = float(info.max) if info else 1.0
    f = block.astype(np.float64)
    a = f[..., 3:4]
    rgb = np.where(a > 0, f[..., :3] * top / np.maximum(a, 1e-12), 0.0)
    out = np.concatenate([np.clip(rgb, 0, top), a], axis=-1)
    return (np.rint(out) if info else out).astype(block.dtype)


def cmyk_to_rgb(block, maxval: float, alpha: bool):
    """``R = max (1 - C/max)(1 - K/max)`` etc. (module docstring); alpha kept when present."""
    f = block.astype(np.float64)
    k = maxval - f[..., 3:4]
    rgb = (maxval - f[..., :3]) * k / maxval
    if alpha:
        rgb = np.concatenate([rgb, f[..., 4:5]], axis=-1)
    if block.dtype.kind == "f":
        return rgb.astype(block.dtype)
    return np.rint(rgb).astype(block.dtype)


def ycbcr_to_rgb(block, coefficients, reference):
    """TIFF 6.0 section 21: YCbCr with YCbCrCoefficients and ReferenceBlackWhite to RGB."""
    lr, lg, lb = coefficients
    y0, y1, cb0, cb1, cr0, cr1 = reference
    f = block.astype(np.float64)
    y = (f[..., 0] - y0) * 255.0 / (y1 - y0)
    cb = (f[..., 1] - cb0) * 127.0 / (cb1 - cb0)
    cr = (f[..., 2] - cr0) * 127.0 / (cr1 - cr0)
    r = y + cr * (2 - 2 * lr)
    b = y + cb * (2 - 2 * lb)
    g = (y - lb * b - lr * r) / lg
    return np.rint(np.clip(np.stack([r, g, b], axis=-1), 0, 255)).astype(np.uint8)
