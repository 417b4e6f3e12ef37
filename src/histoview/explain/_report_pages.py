"""The pages of the explanation report: layout in inches, and drawing with matplotlib (Agg).

:func:`lay_out` places blocks - rows of explanation panels, the agreement table, the
faithfulness small multiples - on pages of one paper size, below a header and above a footer
repeated on every page; :func:`draw_pages` draws them. The blocks themselves are drawn by
:mod:`histoview.explain._report_panels` (the explanation panels) and
:mod:`histoview.explain._report_comparison` (agreement and faithfulness), on the page of
:mod:`histoview.explain._report_canvas`. What the pages show, and the public entry point,
is :func:`histoview.explain.report.render_figure`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from histoview.explain._report_canvas import (
    BLOCK_GAP,
    CB_GAP,
    CB_LABELS,
    CB_W,
    COL_GAP,
    FOOTER_H,
    HEADER_TITLE_PT,
    LEGEND_PT,
    LINE,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    MARGIN_X,
    NOTICE_PT,
    SUB_PT,
    TITLE_PT,
    Block,
    Content,
    Page,
)
from histoview.explain._report_common import COLORBAR_LABEL, page_size
from histoview.explain._report_comparison import _agreement_block, _faithfulness_block
from histoview.explain._report_panels import _draw_panel, _panel

COLOUR_NOTE = (
    f"Colour bars: {COLORBAR_LABEL}, each map scaled to its own range on this image "
    "(0 = its lowest value, 1 = its highest)."
)


@dataclass
class Layout:
    paper: str
    orientation: str
    size: tuple[float, float]
    pages: list[list[Block]]
    tissue_in: tuple[float, float]  # (width, height) of one tissue panel


def column_choices(n: int, orientation: str) -> list[int]:
    """How many panel columns to try for ``n`` explanations (1-3 portrait, 2-4 landscape)."""
    wanted = (1, 2, 3) if orientation == "portrait" else (2, 3, 4)
    return sorted({min(c, n) for c in wanted})


def lay_out(
    content: Content, paper: str, orientation: str, ncols: int, shrink: float = 1.0
) -> Layout:
    """The blocks of ``content`` on pages of ``paper`` in ``orientation``: panels in ``ncols``
    columns, the tissue at ``shrink`` times the largest size a column allows; a block that
    does not fit the rest of a page starts the next one."""
    pw, ph = page_size(paper, orientation)
    content_w = pw - 2 * MARGIN_X
    n = len(content.explanations)
    col_w = (content_w - (ncols - 1) * COL_GAP) / ncols
    tw = col_w - CB_GAP - CB_W - CB_LABELS
    max_th = {"portrait": 5.0, "landscape": 3.6}[orientation] if ncols == 1 else 3.3
    th = min(tw * content.aspect, max_th) * shrink
    tw = th / content.aspect
    if col_w not in content._panels:  # the same for every shrink factor
        content._panels[col_w] = [
            _panel(e, t, col_w) for e, t in zip(content.explanations, content.titles)
        ]
    panels = content._panels[col_w]
    head = TITLE_PT * LINE + 2 * SUB_PT * LINE + 0.03
    blocks: list[Block] = []
    for r in range(math.ceil(n / ncols)):
        row = panels[r * ncols : (r + 1) * ncols]
        legend = max(len(p.legend) for p in row) * LEGEND_PT * LINE

        def draw_row(page, top, row=row):
            for c, p in enumerate(row):
                x = MARGIN_X + c * (col_w + COL_GAP)
                _draw_panel(page, content, p, x, top, head, (tw, th))

        blocks.append(Block(head + th + 0.06 + legend, draw_row))
    if content.agreement is not None:
        blocks.append(_agreement_block(content, content_w))
    blocks.append(_faithfulness_block(content, content_w, 4 if orientation == "portrait" else 6))
    bottom = ph - MARGIN_BOTTOM - FOOTER_H
    pages: list[list[Block]] = [[]]
    y = MARGIN_TOP + content.header_h(content_w)
    for b in blocks:
        if pages[-1] and y + b.height > bottom:
            pages.append([])
            y = MARGIN_TOP + content.header_h(content_w)
        pages[-1].append(b)
        y += b.height + BLOCK_GAP
    return Layout(paper, orientation, (pw, ph), pages, (tw, th))


def draw_pages(layout: Layout, content: Content) -> list:
    """One :class:`matplotlib.figure.Figure` (Agg canvas) of the paper size per page."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = []
    for number, blocks in enumerate(layout.pages, 1):
        fig = Figure(figsize=layout.size)
        FigureCanvasAgg(fig)
        page = Page(fig, layout.size)
        _draw_header(page, content, number, len(layout.pages))
        y = MARGIN_TOP + content.header_h(layout.size[0] - 2 * MARGIN_X)
        for b in blocks:
            b.draw(page, y)
            y += b.height + BLOCK_GAP
        figures.append(fig)
    return figures


def _draw_header(page: Page, content: Content, number: int, total: int) -> None:
    """The research-use line on a line of its own (a long title cannot run into it), the
    title (wrapped), subtitle, synthetic-weights line and colour note, and a rule."""
    from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE, __version__

    x, width = MARGIN_X, page.w - 2 * MARGIN_X
    page.text(
        x, MARGIN_TOP, RESEARCH_NOTICE, fontsize=NOTICE_PT, fontweight="bold", color="darkred"
    )
    y = MARGIN_TOP + NOTICE_PT * LINE
    for line in content.title_lines(width):
        page.text(x, y, line, fontsize=HEADER_TITLE_PT, fontweight="bold")
        y += HEADER_TITLE_PT * LINE
    y = page.lines(x, y + 0.02, [content.subtitle], 8, color="0.15")
    if content.synthetic:
        y = page.lines(x, y, [SYNTHETIC_NOTICE], 8, color="darkred")
    page.lines(x, y, [COLOUR_NOTE], 8, color="0.15")
    rule = page.axes(x, MARGIN_TOP + content.header_h(width) - 0.08, width, 0.001)
    rule.axis("off")
    rule.axhline(0.5, color="0.6", lw=0.6)
    footer = f"{RESEARCH_NOTICE}   histoview {__version__}"
    if total > 1:
        footer += f"   page {number} of {total}"
    page.text(
        page.w / 2,
        page.h - MARGIN_BOTTOM - FOOTER_H + 0.1,
        footer,
        fontsize=7,
        color="0.3",
        ha="center",
    )
