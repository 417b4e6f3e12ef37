"""The compare dock's results: the agreement table (Spearman above the diagonal, top-10 %
IoU below) and the faithfulness figure (deletion and insertion curves per method, drawn on
an Agg figure in any thread).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


# -- results ----------------------------------------------------------------------------------
def fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def fill_agreement_table(table, agreement: dict[str, Any] | None) -> str:
    """Methods x methods in a QTableWidget: Spearman above the diagonal, top-10 % IoU below.
    Rows and columns are numbered (names in a dock's narrow table would cut the names or the
    values); returns the key, ``"1 amil · 2 graph"``, for the text above the table."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QHeaderView, QTableWidgetItem

    table.clear()
    from qtpy.QtGui import QColor

    names = list(agreement["methods"]) if agreement else []
    explains = (agreement or {}).get("explains") or [None] * len(names)
    table.setRowCount(len(names))
    table.setColumnCount(len(names))
    numbers = [str(j + 1) for j in range(len(names))]
    table.setHorizontalHeaderLabels(numbers)
    table.setVerticalHeaderLabels(numbers)
    for j, name in enumerate(names):
        table.horizontalHeaderItem(j).setToolTip(name)
        table.verticalHeaderItem(j).setToolTip(name)
    for i in range(len(names)):
        for j in range(len(names)):
            rho, iou = agreement["spearman"][i][j], agreement["topk_iou"][i][j]
            item = QTableWidgetItem("-" if i == j else fmt(rho if j > i else iou))
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            tip = f"{names[i]} vs {names[j]}: Spearman {fmt(rho)}, top-10 % IoU {fmt(iou)}"
            if explains[i] != explains[j]:  # grey italics: a mark would not fit the narrow cells
                tip += f"; they explain different classes ({explains[i]} vs {explains[j]})"
                item.setForeground(QColor("#8a8a8a"))
                font = item.font()
                font.setItalic(True)
                item.setFont(font)
            item.setToolTip(tip)
            table.setItem(i, j, item)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.resizeRowsToContents()
    rows = sum(table.rowHeight(i) for i in range(len(names)))
    table.setFixedHeight(table.horizontalHeader().height() + rows + 2 * table.frameWidth() + 2)
    # no line break inside an entry: a non-breaking space and non-breaking hyphens
    unbroken = [name.replace("-", "\u2011") for name in names]
    return " · ".join(f"{n}\u00a0{name}" for n, name in zip(numbers, unbroken))


#: the dock's faithfulness figure: width (inches) and resolution
FAITHFULNESS_FIG_WIDTH_IN = 4.2
FAITHFULNESS_FIG_DPI = 100


def draw_faithfulness(fig, faithfulness: dict[str, Any]) -> None:
    """Deletion and insertion curves as small multiples: one plot per method (deletion
    solid, insertion dashed, their areas in the title), so curves of different methods that
    coincide (e.g. flat at 1) never hide each other; flat curves are said to be so."""
    import textwrap

    from histoview.explain.faithfulness import FLAT_NOTE, flat_curves

    fig.clear()
    if not faithfulness:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "Faithfulness curves appear here after Run all methods\nor Agreement & faithfulness.",
            ha="center",
            va="center",
            fontsize=7,
            color="0.4",
        )
        return
    n = len(faithfulness)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for ax, (name, res) in zip(axes.flat, faithfulness.items()):
        ax.plot(res.fractions, res.deletion, color="C3", lw=1.3, label="deletion")
        ax.plot(res.fractions, res.insertion, color="C0", lw=1.3, ls="--", label="insertion")
        ax.set_title(
            f"{name}\ndel {res.deletion_auc:.2f} (lower is better), ins {res.insertion_auc:.2f}",
            fontsize=6.5,
            pad=2,
        )
        if flat_curves(res):  # both lines on top of each other: say why they tell nothing
            ax.text(
                0.5,
                0.6,
                textwrap.fill(FLAT_NOTE, 34),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=5.5,
                color="0.25",
                bbox={"fc": "white", "ec": "0.7", "lw": 0.4, "alpha": 0.9},
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.04, 1.04)
        ax.tick_params(labelsize=5.5, length=2, pad=1)
        ax.grid(alpha=0.25, lw=0.5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("fraction removed / revealed", fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("p(class)", fontsize=6)
    handles, texts = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncols=2, fontsize=6, frameon=False)


def render_faithfulness(faithfulness: dict[str, Any]):
    """``(figure, rgba)``: :func:`draw_faithfulness` on a new Agg figure (any thread) and its
    pixels, (h, w, 4) uint8, for the dock to show without drawing on the main thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, math.ceil(len(faithfulness) / 2)) if len(faithfulness) > 1 else 1
    height = 0.5 + 1.05 * rows if faithfulness else 0.8
    fig = Figure(
        figsize=(FAITHFULNESS_FIG_WIDTH_IN, height), dpi=FAITHFULNESS_FIG_DPI, layout="constrained"
    )
    canvas = FigureCanvasAgg(fig)
    draw_faithfulness(fig, faithfulness)
    canvas.draw()
    return fig, np.asarray(canvas.buffer_rgba()).copy()
