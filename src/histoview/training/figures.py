"""Evaluation figures as matplotlib ``Figure`` objects (never pyplot).

Each function returns a :class:`matplotlib.figure.Figure` with an Agg canvas,
so the CLI saves it (:func:`save_figure`) and the napari training dock can
draw the same object into a Qt canvas. The figures follow the reporting of
the CSPResNet50-FPN-SE paper (``docs/citations.md``): confusion matrices as raw
counts beside row-normalised percentages (its Figs. 6, 8, 10, 12), one-vs-rest
ROC and PR curves with the area in the legend, and training/validation curves
per epoch (its Figs. 7, 9, 11).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from histoview.training.metrics import average_precision, precision_recall_curve, roc_auc, roc_curve


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(
    fig: Figure, path: str | os.PathLike, *, dpi: int = 120, overwrite: bool = False
) -> Path:
    """Write ``fig`` as PNG to ``path`` (or a numbered name beside it when it exists; the
    format follows the suffix); returns the path written."""
    from histoview.io.files import atomic_write

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    writer = atomic_write(path, "wb", overwrite=overwrite)
    with writer as fh:
        fig.savefig(fh, format=Path(path).suffix[1:].lower() or "png", dpi=dpi)
    return writer.path


def confusion_matrix_figure(
    cm, classes: Sequence[str], *, title: str | None = None, stacked: bool = False
) -> Figure:
    """Two panels: raw counts and row-normalised percentages, side by side or ``stacked``.

    Rows are the true class, columns the predicted class (CSPResNet50-FPN-SE paper, Fig. 6).
    Class names are wrapped at about 12 characters (``_`` read as a space) and the column
    labels turn 45 degrees when they would touch; the figure grows with the number of classes
    and the longest name (about 0.5 inch a cell), so its labels never overlap at its own size.
    ``stacked`` puts the panels one above the other, for narrow docks.
    """
    import textwrap

    cm = np.asarray(cm, float)
    k = len(classes)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100
    labels = [textwrap.fill(str(c).replace("_", " "), 12, break_long_words=False) for c in classes]
    fontsize = 9 if k <= 4 else 8 if k <= 8 else 6
    cell = 0.55 if k <= 4 else 0.45 if k <= 8 else 0.32
    char = 0.0085 * fontsize  # inches per character, roughly
    longest = max((len(line) for label in labels for line in label.split("\n")), default=1)
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    rotate = k > 2 or longest * char > 0.9 * cell
    y_labels = longest * char + 0.45  # tick labels and the "true" axis label
    x_labels = (0.75 * longest * char if rotate else lines * fontsize / 60) + 0.45
    panel_w = y_labels + k * cell + 0.9  # + colour bar
    panel_h = k * cell + x_labels + 0.35  # + panel title
    top = 0.35 if title else 0.0
    fig = _figure(panel_w, 2 * panel_h + top) if stacked else _figure(2 * panel_w, panel_h + top)
    axes = fig.subplots(2, 1) if stacked else fig.subplots(1, 2)
    panels = ((cm, "counts", "Blues", "{:.0f}"), (norm, "row-normalised (%)", "Greens", "{:.1f}"))
    for ax, (values, name, cmap, fmt) in zip(axes, panels):
        vmax = values.max() if values.size and values.max() > 0 else 1.0
        im = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=fontsize + 1)
        if rotate:
            ax.set_xticks(
                range(k), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize
            )
        else:
            ax.set_xticks(range(k), labels, fontsize=fontsize)
        ax.set_yticks(range(k), labels, fontsize=fontsize)
        ax.set_xlabel("predicted", fontsize=fontsize)
        ax.set_ylabel("true", fontsize=fontsize)
        for i in range(k):
            for j in range(k):
                colour = "white" if values[i, j] > 0.6 * vmax else "black"
                ax.text(
                    j,
                    i,
                    fmt.format(values[i, j]),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=fontsize if k <= 8 else fontsize - 1,
                )
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=fontsize - 1)
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    return fig


def _curve_classes(probs: np.ndarray, classes: Sequence[str]) -> list[int]:
    # Binary: the positive class (index 1) only; its negative is the mirror image.
    return [1] if probs.shape[1] == 2 else list(range(len(classes)))


def roc_figure(
    y, probs, classes: Sequence[str], *, threshold: float | None = None, title: str | None = None
) -> Figure:
    """ROC curves, one-vs-rest per class for multi-class tasks, AUC in the legend.

    For binary tasks the positive class (index 1) is drawn and, when given, the
    operating point of ``threshold`` (Youden's J from validation, as in the
    CSPResNet50-FPN-SE paper) marked.
    """
    y = np.asarray(y, int)
    probs = np.asarray(probs, float)
    fig = _figure(5.2, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    aucs = []
    for c in _curve_classes(probs, classes):
        truth = y == c
        if truth.all() or not truth.any():
            ax.plot([], [], label=f"{classes[c]} (AUC n/a: one class only)")
            continue
        fpr, tpr, thresholds = roc_curve(truth, probs[:, c])
        auc = roc_auc(truth, probs[:, c])
        aucs.append(auc)
        ax.plot(fpr, tpr, lw=1.8, label=f"{classes[c]} (AUC {auc:.3f})")
        if threshold is not None and probs.shape[1] == 2:
            pred = probs[:, 1] >= threshold
            tp_rate = (pred & truth).sum() / max(truth.sum(), 1)
            fp_rate = (pred & ~truth).sum() / max((~truth).sum(), 1)
            ax.plot([fp_rate], [tp_rate], "o", color="black", label=f"threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    if title is None:
        title = "ROC" if probs.shape[1] == 2 else "ROC, one-vs-rest"
        if len(aucs) > 1:
            title += f" (macro AUC {np.mean(aucs):.3f})"
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(y, probs, classes: Sequence[str], *, title: str | None = None) -> Figure:
    """Precision-recall curves (one-vs-rest for multi-class), average precision in the legend."""
    y = np.asarray(y, int)
    probs = np.asarray(probs, float)
    fig = _figure(5.2, 4.6)
    ax = fig.subplots()
    aps = []
    for c in _curve_classes(probs, classes):
        truth = y == c
        if not truth.any():
            ax.plot([], [], label=f"{classes[c]} (AP n/a: absent)")
            continue
        precision, recall = precision_recall_curve(truth, probs[:, c])
        ap = average_precision(truth, probs[:, c])
        aps.append(ap)
        # AP sums (r_i - r_{i-1}) p_i: each recall step takes the precision at its right end
        line = ax.step(recall, precision, where="pre", lw=1.8, label=f"{classes[c]} (AP {ap:.3f})")
        ax.axhline(
            truth.mean(),
            ls=":",
            lw=1,
            color=line[0].get_color(),
            label="chance (prevalence)" if len(aps) == 1 else None,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if title is None:
        title = "Precision-recall" if probs.shape[1] == 2 else "Precision-recall, one-vs-rest"
        if len(aps) > 1:
            title += f" (macro AP {np.mean(aps):.3f})"
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def training_curves_figure(
    history: Sequence[dict],
    *,
    metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "roc_auc"),
    title: str | None = None,
) -> Figure:
    """Training loss and validation metrics per epoch (CSPResNet50-FPN-SE paper, Figs. 7, 9, 11).

    ``history`` is the engine's list of ``{"epoch", "train_loss", "val": {...}, "lr"}``
    records (``fit``'s result, ``report.json``'s ``history``).
    """
    fig = _figure(9.0, 3.6)
    ax_loss, ax_val = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h.get("train_loss", np.nan) for h in history], "o-", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    if history and any("lr" in h for h in history):
        ax_lr = ax_loss.twinx()
        ax_lr.plot(epochs, [h.get("lr", np.nan) for h in history], color="0.6", ls="--", lw=1)
        ax_lr.set_ylabel("learning rate", color="0.4")
    for name in metrics:
        vals = [(h.get("val") or {}).get(name) for h in history]
        vals = [np.nan if v is None else float(v) for v in vals]
        if vals and not np.all(np.isnan(vals)):
            ax_val.plot(epochs, vals, "o-", label=name.replace("_", " "))
    ax_val.set_ylim(0, 1.02)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    if ax_val.lines:
        ax_val.legend(loc="lower right", fontsize=8)
    for ax in (ax_loss, ax_val):
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title)
    return fig
