"""Page sizes, paper choice and small helpers shared by the report's modules
(:mod:`histoview.explain.report`, its page layout :mod:`histoview.explain._report_pages` and
the modules that draw the pages' blocks)."""

from __future__ import annotations

import locale
import os
from collections.abc import Mapping

import numpy as np

from histoview.explain.base import Explanation
from histoview.explain.display import MAX_VISIBLE_EDGES

#: scale bar lengths to choose from, micrometres
SCALE_BAR_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
COLORBAR_LABEL = "normalised importance"
#: page sizes, inches (width, height) in portrait
PAPER_SIZES_IN = {"a4": (210 / 25.4, 297 / 25.4), "letter": (8.5, 11.0)}
#: territories whose default paper is US Letter (Unicode CLDR, supplementalData.xml, paperSize)
LETTER_TERRITORIES = frozenset("BZ CA CL CO CR GT MX NI PA PH PR SV US VE".split())
_LETTER_NAMES = ("united states", "canada", "mexico", "philippines", "chile", "colombia")
#: graphs with more (undirected) edges than this are drawn without their edges
MAX_EDGES_DRAWN = MAX_VISIBLE_EDGES
#: resolution of the tissue pictures in the PDF, dots per inch
TISSUE_DPI = 200
#: a layout whose tissue panels are smaller than this (longer side, inches) takes more pages
MIN_TISSUE_IN = 2.0
#: tissue sizes tried, as fractions of the largest a column allows: the largest on fewest pages
SHRINK = tuple(1 - 0.04 * k for k in range(9))  # 1.0 ... 0.68


# -- paper ---------------------------------------------------------------------------------------
def check_paper(paper: str) -> str:
    """``"a4"`` or ``"letter"`` from a user's spelling (``"A4"``, ``"US Letter"``...)."""
    key = str(paper).strip().lower().replace("-", " ").replace("_", " ")
    if key == "a4":
        return "a4"
    if key in ("letter", "us letter", "usletter"):
        return "letter"
    raise ValueError(f"unknown paper {paper!r}: use 'a4' or 'letter'")


def _territory(locale_name: str) -> str:
    """The territory of a locale name (``en_US.UTF-8`` -> ``US``; ``C`` -> ``""``)."""
    base = locale_name.split(".")[0].split("@")[0]
    return base.split("_", 1)[1].upper() if "_" in base else ""


def default_paper(environ: Mapping[str, str] | None = None) -> str:
    """The paper size of the user's setting or locale: ``"letter"`` or ``"a4"``.

    ``$HISTOVIEW_PAPER`` (``a4`` or ``letter``) decides when set. Otherwise the paper locale,
    looked up as POSIX does (``LC_ALL``, then ``LC_PAPER``, then ``LANG``; without any,
    Python's :func:`locale.getlocale`), gives US Letter in the territories of
    :data:`LETTER_TERRITORIES` (the United States, Canada, Mexico, the Philippines...) and A4
    everywhere else, the ``C`` locale included.
    """
    env = os.environ if environ is None else environ
    setting = (env.get("HISTOVIEW_PAPER") or "").strip()
    if setting:
        return check_paper(setting)
    name = next((env[v] for v in ("LC_ALL", "LC_PAPER", "LANG") if env.get(v)), None)
    if name is None:
        try:
            name = locale.getlocale()[0] or ""
        except ValueError:  # an unparsable locale: the international default
            name = ""
    territory = _territory(name)
    if territory in LETTER_TERRITORIES or any(n in territory.lower() for n in _LETTER_NAMES):
        return "letter"
    return "a4"


def page_size(paper: str, orientation: str) -> tuple[float, float]:
    """(width, height) in inches of ``paper`` (``"a4"``/``"letter"``) in ``orientation``."""
    w, h = PAPER_SIZES_IN[check_paper(paper)]
    if orientation not in ("portrait", "landscape"):
        raise ValueError(f"orientation must be 'portrait' or 'landscape', got {orientation!r}")
    return (w, h) if orientation == "portrait" else (h, w)


# -- what the panels say ---------------------------------------------------------------------------
def short_hash(sha256: str | None, n: int = 8) -> str:
    """First ``n`` hex digits of a weights hash, or a note that there is none."""
    return sha256[:n] if sha256 else "no checkpoint"


def normalised_threshold(expl: Explanation) -> float | None:
    """The explanation's own threshold (DT Grad-CAM's ``Explanation.threshold``) on its
    [0, 1] normalised scale, ``(threshold - min) / (max - min)``; None without one."""
    if expl.threshold is None:
        return None
    values = np.asarray(expl.values, np.float64)
    values = values[np.isfinite(values)]
    if not values.size or values.max() <= values.min():
        return None
    lo, hi = float(values.min()), float(values.max())
    return float(np.clip((float(expl.threshold) - lo) / (hi - lo), 0.0, 1.0))


def scale_bar_length_um(width_px: float, pixel_size_um: float, max_fraction: float = 0.25) -> float:
    """The longest round length (1, 2, 5 x 10^k um) within ``max_fraction`` of the width."""
    limit = width_px * pixel_size_um * max_fraction
    fitting = [v for v in SCALE_BAR_LENGTHS_UM if v <= limit]
    return float(fitting[-1] if fitting else SCALE_BAR_LENGTHS_UM[0])
