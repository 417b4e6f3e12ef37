"""The blocks of the report that compare methods: agreement matrix and faithfulness plots.

The agreement matrix gives "Spearman / top-k IoU" for every pair of maps, shaded by
Spearman; the faithfulness small multiples give one deletion and insertion curve per
method (Petsiuk et al., RISE, BMVC 2018) with their areas under the curve.
"""

from __future__ import annotations

import math

import numpy as np

from histoview.explain._report_canvas import (
    HEADING_PT,
    LEGEND_PT,
    LINE,
    MARGIN_X,
    SUB_PT,
    TABLE_PT,
    Block,
    Content,
    Page,
    wrap,
)

FAITHFULNESS_NOTE = (
    "y: probability of the explained class as the elements the map ranks highest (patches, "
    "nuclei, pixels) are removed (deletion, solid: falls fast for a faithful map, low area "
    "under the curve, AUC) or revealed on a blurred image (insertion, dashed: rises fast, "
    "high AUC); x: the fraction removed or revealed."
)
FAITH_PLOT_H, FAITH_PLOT_MAX_W = 0.85, 2.2


def _fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


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
    from histoview.explain.agreement import class_mismatch

    explains = agreement.get("explains") or [None] * n
    mismatch = class_mismatch(agreement, content.label_title)
    text = (
        f"Spearman: rank correlation of the two maps (1 = the same ranking, 0 = unrelated, "
        f"-1 = opposite; blue where they agree, red where they disagree). IoU: overlap of "
        f"their top {pct} % pixels (1 = the same region, 0 = disjoint)."
    )
    if mismatch:
        text += f" * The two maps explain different classes ({mismatch}): compare with care."
    note = wrap(text, content_w, LEGEND_PT)
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
                    if explains[i] != explains[j]:
                        text += " *"  # different classes: the note says which
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
    from histoview.explain.faithfulness import FLAT_NOTE, flat_curves

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
            if flat_curves(r):  # the two lines lie on each other: say why they tell nothing
                ax.text(
                    0.5,
                    0.62,
                    "\n".join(wrap(FLAT_NOTE, plot_w - 0.1, LEGEND_PT)),
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=LEGEND_PT,
                    color="0.25",
                    bbox={"fc": "white", "ec": "0.7", "lw": 0.4, "alpha": 0.9},
                )
            if col:
                ax.set_yticklabels([])
            if k == 0:
                ax.legend(fontsize=6, frameon=False, loc="lower right", handlelength=1.8)

    return Block(title_h + note_h + rows * row_h, draw)
