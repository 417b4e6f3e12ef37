"""The pages of the explanation report: layout in inches, and drawing with matplotlib (Agg).

:func:`lay_out` places blocks - rows of explanation panels, the agreement table, the
faithfulness small multiples - on pages of one paper size, below a header and above a footer
repeated on every page; :func:`draw_pages` draws them. What the pages show, and the public
entry point, is :func:`histoview.explain.report.render_figure`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from histoview.explain._report_common import (
    COLORBAR_LABEL,
    MAX_EDGES_DRAWN,
    TISSUE_DPI,
    normalised_threshold,
    page_size,
    scale_bar_length_um,
    short_hash,
)
from histoview.explain.agreement import normalise
from histoview.explain.base import Explanation, NucleiPoints
from histoview.explain.display import format_probability, has_contrast

COLOUR_NOTE = (
    f"Colour bars: {COLORBAR_LABEL}, each map scaled to its own range on this image "
    "(0 = its lowest value, 1 = its highest)."
)
FAITHFULNESS_NOTE = (
    "y: probability of the explained class as the elements the map ranks highest (patches, "
    "nuclei, pixels) are removed (deletion, solid: falls fast for a faithful map, low area "
    "under the curve, AUC) or revealed on a blurred image (insertion, dashed: rises fast, "
    "high AUC); x: the fraction removed or revealed."
)

# layout, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM, FOOTER_H = 0.45, 0.4, 0.35, 0.32
COL_GAP, BLOCK_GAP = 0.3, 0.16
CB_GAP, CB_W, CB_LABELS = 0.06, 0.12, 0.4
LINE = 1.3 / 72  # height of one line of text per point of font size
TITLE_PT, SUB_PT, LEGEND_PT, TABLE_PT, HEADING_PT = 10.0, 7.5, 6.5, 7.5, 10.0
FAITH_PLOT_H, FAITH_PLOT_MAX_W = 0.85, 2.2


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
        self._panels: dict[float, list[_Panel]] = {}

    @property
    def aspect(self) -> float:
        H, W = self.image.shape[:2]
        return float(np.clip(H / W, 0.25, 4.0))

    @property
    def header_h(self) -> float:
        return 12.5 * LINE + 8 * LINE * (3 if self.synthetic else 2) + 0.16

    def display(self, size_in: float) -> np.ndarray:
        """The tissue downsampled for ``size_in`` inches at :data:`TISSUE_DPI`."""
        side = min(self.max_display_side, max(64, round(size_in * TISSUE_DPI)))
        if side not in self._display:
            self._display[side] = _display_image(self.image, side)
        return self._display[side]


def _fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


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


# -- layout ----------------------------------------------------------------------------------------
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


@dataclass
class Layout:
    paper: str
    orientation: str
    size: tuple[float, float]
    pages: list[list[Block]]
    tissue_in: tuple[float, float]  # (width, height) of one tissue panel


@dataclass
class _Panel:
    expl: Explanation
    title: str
    lines: list[str]  # under the title
    legend: list[str]  # under the tissue, wrapped
    threshold: float | None  # on the normalised scale
    contrast: bool


def _undirected_edges(geom: NucleiPoints) -> np.ndarray:
    ei = np.asarray(geom.edge_index).reshape(2, -1)
    if not ei.size:
        return ei
    pairs = np.unique(np.sort(ei, axis=0), axis=1)
    return pairs[:, pairs[0] != pairs[1]]


def _panel(expl: Explanation, title: str, text_w: float) -> _Panel:
    from histoview.explain.methods import METHODS

    method = METHODS.get(expl.method)
    p = format_probability(float(expl.probabilities[expl.predicted_class]))
    lines = [f"predicted: {expl.predicted_label} (p {p if p[0] in '<>' else '= ' + p})"]
    if expl.target_class != expl.predicted_class:
        lines[0] += f"; explains: {expl.classes[expl.target_class]}"
    lines.append(f"model: {expl.model}, weights {short_hash(expl.checkpoint_sha256)}")
    if (expl.extra or {}).get("importance"):
        lines[1] += f"; {expl.extra['importance']}"
    thr = normalised_threshold(expl)
    contrast = has_contrast(expl.values)
    legend = [f"Colour: {method.values}."] if method and method.values else []
    if thr is not None:
        how = str((expl.extra or {}).get("threshold_method", "dynamic")).capitalize()
        legend.append(
            f"Outlined: above the per-image {how} threshold {thr:.2f} (marked on the colour bar)."
        )
    if isinstance(expl.geometry, NucleiPoints):
        n_edges = _undirected_edges(expl.geometry).shape[1]
        edges = (
            f"{n_edges} graph edges as thin grey lines."
            if n_edges <= MAX_EDGES_DRAWN
            else f"its {n_edges} graph edges are not drawn."
        )
        legend.append(f"{len(expl.geometry)} nuclei filled by value; {edges}")
    if not contrast:
        legend.insert(0, "No contrast: the values are (nearly) all equal, so no colour is shown.")
    wrapped = [w for item in legend for w in wrap(item, text_w, LEGEND_PT)]
    return _Panel(expl, title, lines, wrapped, thr, contrast)


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
    y = MARGIN_TOP + content.header_h
    for b in blocks:
        if pages[-1] and y + b.height > bottom:
            pages.append([])
            y = MARGIN_TOP + content.header_h
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
        y = MARGIN_TOP + content.header_h
        for b in blocks:
            b.draw(page, y)
            y += b.height + BLOCK_GAP
        figures.append(fig)
    return figures


# -- the panels ------------------------------------------------------------------------------------
def _blend(tissue: np.ndarray, expl: Explanation, cmap, alpha: float, thresholded: bool):
    """(h, w, 3) float: the tissue with the normalised map blended in, more opaque where
    higher; uncovered pixels (NaN) and, for a thresholded map, the zeros below its threshold
    leave the tissue bare."""
    dense = normalise(expl.to_dense(tissue.shape[:2], fill=np.nan))
    v = np.nan_to_num(dense)
    if thresholded:
        opacity = np.where(v > 0, alpha * (0.35 + 0.65 * v), 0.0)
    else:
        opacity = np.where(np.isfinite(dense), alpha * (0.2 + 0.8 * v), 0.0)
    out = tissue.astype(np.float32) / 255
    out = out * (1 - opacity[..., None]) + cmap(v)[..., :3] * opacity[..., None]
    return np.clip(out, 0, 1)


def _draw_nuclei(ax, expl: Explanation, W: int, H: int, cmap, px_to_pt: float) -> None:
    """Nuclei filled by normalised value over thin, faint edges (none above
    :data:`MAX_EDGES_DRAWN`); points sized to the nuclei where there are no outlines."""
    from matplotlib.collections import LineCollection, PolyCollection

    geom = expl.geometry
    gh, gw = geom.image_shape
    scale = np.array([W / gw, H / gh])
    xy = np.asarray(geom.centroids, np.float64)[:, ::-1] * scale
    pairs = _undirected_edges(geom)
    if pairs.size and pairs.shape[1] <= MAX_EDGES_DRAWN:
        segs = np.stack([xy[pairs[0]], xy[pairs[1]]], axis=1)
        ax.add_collection(LineCollection(segs, colors="0.3", linewidths=0.2, alpha=0.3))
    values = normalise(np.asarray(expl.values, np.float32).reshape(-1))
    face = cmap(values)
    face[:, 3] = 0.45 + 0.5 * values  # unimportant nuclei stay see-through
    order = np.argsort(values, kind="stable")  # the most important on top
    if geom.outlines:
        polys = [np.asarray(geom.outlines[i], np.float64)[:, ::-1] * scale for i in order]
        ax.add_collection(
            PolyCollection(polys, facecolors=face[order], edgecolors="black", linewidths=0.25)
        )
    else:
        diameter_pt = 2 * geom.radius * float(scale.mean()) * px_to_pt
        ax.scatter(
            *xy[order].T, s=diameter_pt**2, c=face[order], edgecolors="black", linewidths=0.25
        )


def _draw_scale_bar(ax, width_px: float, height_px: float, pixel_size_um: float) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = scale_bar_length_um(width_px, pixel_size_um)
    bar = AnchoredSizeBar(
        ax.transData,
        length / pixel_size_um,
        f"{length:g} µm",
        "lower left",
        pad=0.3,
        borderpad=0.4,
        sep=2,
        color="black",
        frameon=True,
        size_vertical=max(height_px * 0.012, 1.0),
        fontproperties={"size": 7},
    )
    bar.patch.set_alpha(0.8)
    bar.patch.set_linewidth(0)
    ax.add_artist(bar)


def _outline(ax, expl: Explanation, shape: tuple[int, int], W: int, H: int) -> None:
    """Outline where the thresholded map is above its threshold (white on a black halo)."""
    import matplotlib.patheffects as pe

    above = (np.asarray(expl.values, np.float32) > float(expl.threshold)).astype(np.float32)
    region = expl.geometry.rasterize(above, shape=shape)
    if not (region > 0.5).any():
        return
    h, w = shape
    xs, ys = (np.arange(w) + 0.5) * W / w, (np.arange(h) + 0.5) * H / h
    cs = ax.contour(xs, ys, region, levels=[0.5], colors="white", linewidths=1.1)
    cs.set_path_effects([pe.Stroke(linewidth=2.2, foreground="black"), pe.Normal()])


def _draw_colour_bar(page: Page, cmap, x, top, h, threshold: float | None) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = page.axes(x, top, CB_W, h)
    cb = page.fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax)
    cb.outline.set_linewidth(0.4)
    marks = [(0.0, "0"), (0.5, "0.5"), (1.0, "1")]
    if threshold is not None:
        marks = [(t, s) for t, s in marks if abs(t - threshold) > 0.12]
        marks.append((threshold, f"{threshold:.2f}\nthreshold"))
        cax.axhline(threshold, color="white", lw=2.4)
        cax.axhline(threshold, color="black", lw=0.9)
    cb.set_ticks([t for t, _ in marks], labels=[s for _, s in marks])
    cax.tick_params(labelsize=6.5, length=2, width=0.5, pad=1.5)


def _draw_panel(page: Page, content: Content, p: _Panel, x, top, head, tissue_in) -> None:
    tw, th = tissue_in
    page.text(x, top, p.title, fontsize=TITLE_PT, fontweight="bold")
    page.lines(x, top + TITLE_PT * LINE, p.lines, SUB_PT)
    tissue_top = top + head
    ax = page.axes(x, tissue_top, tw, th)
    H, W = content.image.shape[:2]
    cmap = content.colormap(p.expl)
    shown = content.display(max(tw, th))
    nuclei = isinstance(p.expl.geometry, NucleiPoints)
    picture = shown
    if p.contrast and not nuclei:
        picture = _blend(shown, p.expl, cmap, content.alpha, p.threshold is not None)
    ax.imshow(picture, extent=(0, W, H, 0), interpolation="antialiased")
    if p.contrast and nuclei:
        _draw_nuclei(ax, p.expl, W, H, cmap, tw * 72 / W)
    if p.contrast and p.threshold is not None:
        _outline(ax, p.expl, shown.shape[:2], W, H)
    if not p.contrast:
        ax.text(
            0.5,
            0.5,
            "no contrast",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            bbox={"fc": "white", "alpha": 0.8, "lw": 0},
        )
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_linewidth(0.5)
    if content.pixel_size_um:
        _draw_scale_bar(ax, W, H, float(content.pixel_size_um))
    _draw_colour_bar(page, cmap, x + tw + CB_GAP, tissue_top, th, p.threshold)
    page.lines(x, tissue_top + th + 0.06, p.legend, LEGEND_PT, color="0.2")


# -- agreement and faithfulness ------------------------------------------------------------
def _agreement_block(content: Content, content_w: float) -> Block:
    """The agreement matrix: "Spearman / IoU" per pair, shaded by Spearman, names wrapped."""
    agreement = content.agreement
    names = [content.label_title.get(m, m) for m in agreement["methods"]]
    n = len(names)
    pct = round(100 * float(agreement.get("topk_fraction", 0.1)))
    label_w = min(max(len(s) for s in names) * 0.56 * TABLE_PT / 72 + 0.12, 0.3 * content_w)
    cell_w = min(1.4, (content_w - label_w) / n)
    col_names = [wrap(s, cell_w - 0.08, TABLE_PT) for s in names]
    row_names = [wrap(s, label_w - 0.08, TABLE_PT) for s in names]
    head_h = max(len(c) for c in col_names) * TABLE_PT * LINE + 0.06
    row_hs = [max(len(r), 1) * TABLE_PT * LINE + 0.05 for r in row_names]
    table_h = head_h + sum(row_hs)
    note = wrap(
        f"Spearman: rank correlation of the two maps (1 = the same ranking, 0 = unrelated, "
        f"-1 = opposite; blue where they agree, red where they disagree). IoU: overlap of "
        f"their top {pct} % pixels (1 = the same region, 0 = disjoint).",
        content_w,
        LEGEND_PT,
    )
    title_h = HEADING_PT * LINE + 0.03
    height = title_h + table_h + 0.05 + len(note) * LEGEND_PT * LINE

    def draw(page: Page, top: float) -> None:
        from matplotlib import colormaps
        from matplotlib.patches import Rectangle

        page.text(
            MARGIN_X,
            top,
            f"Agreement between methods: Spearman / top-{pct} % IoU",
            fontsize=HEADING_PT,
            fontweight="bold",
        )
        table_w = label_w + n * cell_w
        ax = page.axes(MARGIN_X, top + title_h, table_w, table_h)
        ax.set_xlim(0, table_w)
        ax.set_ylim(table_h, 0)
        ax.axis("off")
        shade = colormaps["RdBu"]
        for j, lines in enumerate(col_names):
            ax.text(
                label_w + (j + 0.5) * cell_w,
                head_h - 0.04,
                "\n".join(lines),
                ha="center",
                va="bottom",
                fontsize=TABLE_PT,
                fontweight="bold",
            )
        y0 = head_h
        for i, lines in enumerate(row_names):
            rh = row_hs[i]
            ax.text(
                0.04,
                y0 + rh / 2,
                "\n".join(lines),
                va="center",
                fontsize=TABLE_PT,
                fontweight="bold",
            )
            for j in range(n):
                rho, iou = agreement["spearman"][i][j], agreement["topk_iou"][i][j]
                if i == j:
                    colour, text = "0.93", "-"
                else:
                    r = float(rho) if rho is not None and np.isfinite(rho) else 0.0
                    colour = tuple(0.55 + 0.45 * np.asarray(shade(0.5 + 0.5 * r)[:3]))
                    text = f"{_fmt(rho)} / {_fmt(iou)}"
                x0 = label_w + j * cell_w
                ax.add_patch(Rectangle((x0, y0), cell_w, rh, fc=colour, ec="white", lw=1))
                ax.text(
                    x0 + cell_w / 2, y0 + rh / 2, text, ha="center", va="center", fontsize=TABLE_PT
                )
            y0 += rh
        page.lines(MARGIN_X, top + title_h + table_h + 0.05, note, LEGEND_PT, color="0.2")

    return Block(height, draw)


def _as_dict(res) -> dict:
    return res.to_dict() if hasattr(res, "to_dict") else dict(res)


def _faithfulness_block(content: Content, content_w: float, per_row: int) -> Block:
    """Small multiples: one deletion + insertion plot per method, with its two AUCs."""
    faith = [(content.label_title.get(k, k), _as_dict(v)) for k, v in content.faithfulness.items()]
    title_h = HEADING_PT * LINE + 0.03
    if not faith:

        def draw_none(page: Page, top: float) -> None:
            page.text(MARGIN_X, top, "Faithfulness", fontsize=HEADING_PT, fontweight="bold")
            page.text(
                MARGIN_X,
                top + title_h,
                "Not computed: it needs the models (histoview "
                "explain --method all, or 'Agreement & faithfulness' in the compare dock).",
                fontsize=SUB_PT,
            )

        return Block(title_h + SUB_PT * LINE, draw_none)
    note = wrap(FAITHFULNESS_NOTE, content_w, LEGEND_PT)
    note_h = len(note) * LEGEND_PT * LINE + 0.08
    per_row = min(per_row, len(faith))
    rows = math.ceil(len(faith) / per_row)
    gap, left = 0.25, 0.2  # left: the first plot's tick labels
    plot_w = min(FAITH_PLOT_MAX_W, (content_w - left - (per_row - 1) * gap) / per_row)
    plot_title_h = SUB_PT * LINE + 2 * LEGEND_PT * LINE + 0.04
    row_h = plot_title_h + FAITH_PLOT_H + 0.16

    def draw(page: Page, top: float) -> None:
        page.text(
            MARGIN_X,
            top,
            "Faithfulness: deletion and insertion, one plot per method",
            fontsize=HEADING_PT,
            fontweight="bold",
        )
        page.lines(MARGIN_X, top + title_h, note, LEGEND_PT, color="0.2")
        for k, (name, r) in enumerate(faith):
            row, col = divmod(k, per_row)
            x = MARGIN_X + left + col * (plot_w + gap)
            ptop = top + title_h + note_h + row * row_h
            page.text(x, ptop, wrap(name, plot_w, SUB_PT)[0], fontsize=SUB_PT, fontweight="bold")
            y = ptop + SUB_PT * LINE
            page.text(x, y, f"deletion AUC {r['deletion_auc']:.2f}", fontsize=LEGEND_PT, color="C3")
            page.text(
                x,
                y + LEGEND_PT * LINE,
                f"insertion AUC {r['insertion_auc']:.2f}",
                fontsize=LEGEND_PT,
                color="C0",
            )
            ax = page.axes(x, ptop + plot_title_h, plot_w, FAITH_PLOT_H)
            f = np.asarray(r["fractions"], float)
            ax.fill_between(f, np.asarray(r["deletion"], float), color="C3", alpha=0.12, lw=0)
            ax.plot(f, r["deletion"], color="C3", lw=1.3, label="deletion")
            ax.plot(f, r["insertion"], color="C0", lw=1.3, ls="--", label="insertion")
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.04, 1.06)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6.5, length=2, width=0.5, pad=1.5)
            ax.grid(lw=0.3, color="0.85")
            for s in ax.spines.values():
                s.set_linewidth(0.5)
            if col:
                ax.set_yticklabels([])
            if k == 0:
                ax.legend(fontsize=6, frameon=False, loc="center right", handlelength=1.8)

    return Block(title_h + note_h + rows * row_h, draw)


def _draw_header(page: Page, content: Content, number: int, total: int) -> None:
    from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE, __version__

    x = MARGIN_X
    page.text(
        x, MARGIN_TOP, f"Explanation report: {content.image_name}", fontsize=12.5, fontweight="bold"
    )
    page.text(
        page.w - MARGIN_X,
        MARGIN_TOP,
        RESEARCH_NOTICE,
        fontsize=10,
        fontweight="bold",
        color="darkred",
        ha="right",
    )
    y = page.lines(x, MARGIN_TOP + 12.5 * LINE + 0.02, [content.subtitle], 8, color="0.15")
    if content.synthetic:
        y = page.lines(x, y, [SYNTHETIC_NOTICE], 8, color="darkred")
    page.lines(x, y, [COLOUR_NOTE], 8, color="0.15")
    rule = page.axes(x, MARGIN_TOP + content.header_h - 0.08, page.w - 2 * x, 0.001)
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
