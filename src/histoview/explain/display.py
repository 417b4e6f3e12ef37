"""How explanation values are shown, the same in the viewer, the PNG and the PDF.

One colour-scale convention: every overlay runs its method's colormap (the method
registry's ``Method.colormap``) from the lowest to the highest value of that map, so 0 is the
least and 1 the most important element of this image for this method; what the values
themselves mean is the registry's ``Method.values`` text. A map whose values hardly differ
(:func:`has_contrast`) is said to have no contrast instead of being painted in one colour.
"""

from __future__ import annotations

import numpy as np

#: a map whose values differ by less than this share of their largest magnitude has no contrast
NO_CONTRAST = 0.05
#: nuclei graphs with more (undirected) edges than this show their edges hidden / not drawn
MAX_VISIBLE_EDGES = 3000


def format_probability(p: float) -> str:
    """A probability with two decimals, never a false 1.00 or 0.00 (``> 0.99``, ``< 0.01``)."""
    p = float(p)
    if p >= 0.995:
        return "> 0.99"
    if p <= 0.005:
        return "< 0.01"
    return f"{p:.2f}"


def has_contrast(values: np.ndarray) -> bool:
    """Whether a map's finite values spread over more than :data:`NO_CONTRAST` of their
    largest magnitude (a near-constant map says nothing about where the evidence is)."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return False
    hi, lo = float(finite.max()), float(finite.min())
    return hi - lo > NO_CONTRAST * max(abs(hi), abs(lo), 1e-12)
