"""What the report shows and where it goes on a page: :class:`Content`, placement in inches.

:class:`Content` is what :func:`histoview.explain.report.render_figure` prepares for the
pages; :class:`Page` places axes and text on one figure in inches measured down from the
top of the page, and a :class:`Block` is a part of a page of known height that draws
itself there. The sizes below (inches and font points) are shared by the panels
(:mod:`histoview.explain._report_panels`), the method comparison
(:mod:`histoview.explain._report_comparison`) and the layout
(:mod:`histoview.explain._report_pages`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoview.explain._report_common import TISSUE_DPI
from histoview.explain.base import Explanation

# layout, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM, FOOTER_H = 0.45, 0.4, 0.35, 0.32
COL_GAP, BLOCK_GAP = 0.3, 0.16
CB_GAP, CB_W, CB_LABELS = 0.06, 0.12, 0.4
LINE = 1.3 / 72  # height of one line of text per point of font size
TITLE_PT, SUB_PT, LEGEND_PT, TABLE_PT, HEADING_PT = 10.0, 7.5, 6.5, 7.5, 10.0
HEADER_TITLE_PT, NOTICE_PT = 12.5, 10.0  # the report's title (bold), the research-use line


@dataclass
class Content:
    """What the report shows, prepared by :func:`~histoview.explain.report.render_figure`."""

    image: np.ndarray  # (H, W, 3) uint8
    explanations: list[Explanation]
    titles: list[str]
    label_title: dict[str, str]  # method label -> panel title
    pixel_size_um: float | None
    image_name: str
    subtitle: str
    synthetic: bool
    agreement: dict | None
    faithfulness: dict[str, Any]  # label -> FaithfulnessResult or its dict
    colormap: Callable[[Explanation], Any]
    alpha: float
    max_display_side: int

    def __post_init__(self):
        self._display: dict[int, np.ndarray] = {}
        self._panels: dict[float, list] = {}  # column width -> its panels

    @property
    def aspect(self) -> float:
        H, W = self.image.shape[:2]
        return float(np.clip(H / W, 0.25, 4.0))

    def title_lines(self, width_in: float) -> list[str]:
        """The report's title, wrapped to ``width_in`` inches (a long file name breaks)."""
        return wrap(f"Explanation report: {self.image_name}", width_in, HEADER_TITLE_PT * 1.1)

    def header_h(self, width_in: float) -> float:
        """Height of the header on a page whose content is ``width_in`` inches wide: the
        research-use line, the title, the subtitle, the synthetic-weights line if any, the
        colour note."""
        title = len(self.title_lines(width_in)) * HEADER_TITLE_PT * LINE
        return NOTICE_PT * LINE + title + 8 * LINE * (3 if self.synthetic else 2) + 0.18

    def display(self, size_in: float) -> np.ndarray:
        """The tissue downsampled for ``size_in`` inches at :data:`TISSUE_DPI`."""
        side = min(self.max_display_side, max(64, round(size_in * TISSUE_DPI)))
        if side not in self._display:
            self._display[side] = _display_image(self.image, side)
        return self._display[side]


def wrap(text: str, width_in: float, size_pt: float) -> list[str]:
    """``text`` in lines that fit ``width_in`` inches at ``size_pt`` (DejaVu Sans)."""
    chars = max(8, int(width_in * 72 / (0.56 * size_pt)))  # ~0.56 em per character
    return textwrap.wrap(text, chars) or [""]


def _display_image(image: np.ndarray, max_side: int) -> np.ndarray:
    H, W = image.shape[:2]
    scale = max_side / max(H, W)
    if scale >= 1:
        return image
    from skimage.transform import resize

    shape = (max(1, round(H * scale)), max(1, round(W * scale)))
    small = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


@dataclass
class Block:
    height: float
    draw: Callable[[Page, float], None]  # (page, top in inches from the page's top)


class Page:
    """Placement in inches on one figure, ``top`` measured down from the top of the page."""

    def __init__(self, fig, size: tuple[float, float]):
        self.fig, (self.w, self.h) = fig, size

    def axes(self, x: float, top: float, w: float, h: float):
        return self.fig.add_axes((x / self.w, 1 - (top + h) / self.h, w / self.w, h / self.h))

    def text(self, x: float, top: float, s: str, **kw):
        kw.setdefault("va", "top")
        return self.fig.text(x / self.w, 1 - top / self.h, s, **kw)

    def lines(self, x: float, top: float, lines: list[str], size: float, **kw) -> float:
        """Draw ``lines`` one below the other; returns the top of the next line."""
        for line in lines:
            self.text(x, top, line, fontsize=size, **kw)
            top += size * LINE
        return top
