"""A one-page figure comparing explanations of one image, saved as PNG or PDF.

:func:`render_figure` draws the tissue once per explanation, each with its
overlay, colour bar, method, predicted class and probability, model and short
weights hash, a micrometre scale bar (when the pixel size is known), and
optionally the agreement table (:mod:`histoview.explain.agreement`) and
faithfulness curves (:mod:`histoview.explain.faithfulness`) below. The page
names the image and the date and carries histoview's research-use notice
(plus the synthetic-weights notice where it applies).

Values are min-max normalised per explanation (:func:`~histoview.explain.agreement.normalise`)
so that all panels share one colour scale ("normalised importance"); patch and
dense maps are semi-transparent colour maps over the tissue, nuclei are points
coloured by importance with their graph's edges as thin lines.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas,
never with pyplot, so rendering never touches a GUI backend. PDFs keep their
text as text (TrueType, ``pdf.fonttype`` 42), so it can be searched and extracted.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.agreement import method_labels, normalise
from histoview.explain.base import Explanation, NucleiPoints
from histoview.io.files import atomic_write

#: scale bar lengths to choose from, micrometres
SCALE_BAR_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
COLORBAR_LABEL = "normalised importance"


def short_hash(sha256: str | None, n: int = 8) -> str:
    """First ``n`` hex digits of a weights hash, or a note that there is none."""
    return sha256[:n] if sha256 else "no checkpoint"


def scale_bar_length_um(width_px: float, pixel_size_um: float, max_fraction: float = 0.25) -> float:
    """The longest round length (1, 2, 5 x 10^k um) within ``max_fraction`` of the width."""
    limit = width_px * pixel_size_um * max_fraction
    fitting = [v for v in SCALE_BAR_LENGTHS_UM if v <= limit]
    return float(fitting[-1] if fitting else SCALE_BAR_LENGTHS_UM[0])


def _display_image(image: np.ndarray, max_side: int) -> np.ndarray:
    H, W = image.shape[:2]
    scale = max_side / max(H, W)
    if scale >= 1:
        return image
    from skimage.transform import resize

    shape = (max(1, round(H * scale)), max(1, round(W * scale)))
    small = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def _panel_text(expl: Explanation) -> str:
    prob = float(expl.probabilities[expl.predicted_class])
    lines = [f"predicted: {expl.predicted_label} (p = {prob:.2f})"]
    if expl.target_class != expl.predicted_class:
        lines.append(f"explains: {expl.classes[expl.target_class]}")
    lines.append(f"model: {expl.model}, weights {short_hash(expl.checkpoint_sha256)}")
    return "\n".join(lines)


def _draw_overlay(ax, expl: Explanation, extent, display_shape, cmap: str, alpha: float) -> None:
    H, W = extent[2], extent[1]
    geom = expl.geometry
    if isinstance(geom, NucleiPoints):
        from matplotlib.collections import LineCollection

        gh, gw = geom.image_shape
        xy = np.asarray(geom.centroids, np.float64)[:, ::-1] * (W / gw, H / gh)
        ei = np.asarray(geom.edge_index)
        if ei.size:
            keep = ei[0] < ei[1]
            segs = np.stack([xy[ei[0, keep]], xy[ei[1, keep]]], axis=1)
            ax.add_collection(LineCollection(segs, colors="white", linewidths=0.4, alpha=0.6))
        values = normalise(np.asarray(expl.values, np.float32).reshape(-1))
        order = np.argsort(values, kind="stable")  # most important drawn on top
        ax.scatter(
            xy[order, 0],
            xy[order, 1],
            c=values[order],
            cmap=cmap,
            vmin=0,
            vmax=1,
            s=14,
            edgecolors="black",
            linewidths=0.25,
        )
        return
    dense = normalise(expl.to_dense(display_shape, fill=np.nan))
    # Opacity grows with importance so that unimportant tissue stays visible; uncovered
    # pixels (NaN: background patches) are fully transparent.
    opacity = np.where(np.isfinite(dense), alpha * (0.2 + 0.8 * np.nan_to_num(dense)), 0.0)
    ax.imshow(
        dense, cmap=cmap, vmin=0, vmax=1, alpha=opacity, extent=extent, interpolation="nearest"
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
        borderpad=0.5,
        sep=3,
        color="black",
        frameon=True,
        size_vertical=max(height_px * 0.008, 1.0),
        fontproperties={"size": 8},
    )
    bar.patch.set_alpha(0.75)
    ax.add_artist(bar)


def _draw_agreement(ax, agreement: Mapping[str, Any]) -> None:
    methods = list(agreement["methods"])

    def fmt(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"

    cells = [
        [
            f"{fmt(agreement['spearman'][i][j])} / {fmt(agreement['topk_iou'][i][j])}"
            for j in range(len(methods))
        ]
        for i in range(len(methods))
    ]
    ax.axis("off")
    table = ax.table(
        cellText=cells, rowLabels=methods, colLabels=methods, loc="center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    pct = round(100 * float(agreement.get("topk_fraction", 0.1)))
    ax.set_title(f"Agreement: Spearman rank correlation / top-{pct} % IoU", fontsize=9)


def _draw_faithfulness(ax, faithfulness: Mapping[str, Any]) -> None:
    colours = [f"C{i}" for i in range(10)]
    for i, (name, res) in enumerate(faithfulness.items()):
        r = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        c = colours[i % 10]
        ax.plot(
            r["fractions"],
            r["deletion"],
            color=c,
            lw=1.2,
            label=f"{name} deletion (AUC {r['deletion_auc']:.2f})",
        )
        ax.plot(
            r["fractions"],
            r["insertion"],
            color=c,
            lw=1.2,
            ls="--",
            label=f"{name} insertion (AUC {r['insertion_auc']:.2f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("fraction of elements removed (deletion) / revealed (insertion)", fontsize=8)
    ax.set_ylabel("probability of explained class", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("Faithfulness (deletion: lower AUC is better; insertion: higher)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)


def render_figure(
    image: np.ndarray,
    explanations: Sequence[Explanation] | Explanation,
    *,
    titles: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    image_name: str = "",
    agreement: Mapping[str, Any] | None = None,
    faithfulness: Mapping[str, Any] | None = None,
    date: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.55,
    max_display_side: int = 1024,
):
    """One figure: a panel per explanation, side by side, plus optional agreement and faithfulness.

    Args:
        image: (H, W, 3) uint8, the image explained (any level: overlays are scaled to it).
        explanations: one explanation or several of the same image.
        titles: panel titles (default: :func:`~histoview.explain.agreement.method_labels`).
        pixel_size_um: micrometres per pixel of ``image``, for the scale bar (none if unknown).
        image_name: file name shown on the page.
        agreement: a record from :func:`~histoview.explain.agreement.agreement_table`.
        faithfulness: name -> :class:`~histoview.explain.faithfulness.FaithfulnessResult`
            (or its ``to_dict()``).
        date: date shown (default today, ISO format).
        cmap, alpha: colour map (default: each method's, as in the viewer) and opacity of
            the overlays.
        max_display_side: the tissue is downsampled to at most this many pixels per side.

    Returns:
        A :class:`matplotlib.figure.Figure` on an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from histoview import RESEARCH_NOTICE, SYNTHETIC_NOTICE, __version__
    from histoview.explain.methods import METHODS

    if isinstance(explanations, Explanation):
        explanations = [explanations]
    explanations = list(explanations)
    if not explanations:
        raise ValueError("no explanations to draw")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    titles = list(titles) if titles is not None else method_labels(explanations)
    if len(titles) != len(explanations):
        raise ValueError(f"{len(titles)} titles for {len(explanations)} explanations")
    H, W = image.shape[:2]
    shown = _display_image(image, max_display_side)
    extent = (0, W, H, 0)
    n = len(explanations)
    aspect = float(np.clip(H / W, 0.3, 3.0))
    panel_w = 4.2
    panel_h = panel_w * aspect + 1.1
    bottom = [b for b in (agreement, faithfulness) if b]
    bottom_h = 3.0 if bottom else 0.0
    fig = Figure(
        figsize=(max(panel_w * n, 7.5 if bottom else 0), panel_h + bottom_h + 1.0),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(
        2 if bottom else 1, 1, height_ratios=[panel_h, bottom_h] if bottom else [1]
    )
    top = gs[0].subgridspec(1, n)
    for i, (expl, title) in enumerate(zip(explanations, titles)):
        panel_cmap = cmap or (
            METHODS[expl.method].colormap if expl.method in METHODS else "inferno"
        )
        mappable = ScalarMappable(Normalize(0, 1), panel_cmap)
        ax = fig.add_subplot(top[0, i])
        ax.imshow(shown, extent=extent, interpolation="antialiased")
        _draw_overlay(ax, expl, extent, shown.shape[:2], panel_cmap, alpha)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=11, fontweight="bold")
        ax.set_xlabel(_panel_text(expl), fontsize=8)
        if pixel_size_um:
            _draw_scale_bar(ax, W, H, float(pixel_size_um))
        cb = fig.colorbar(mappable, ax=ax, shrink=0.8, pad=0.02)
        cb.set_label(COLORBAR_LABEL, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if bottom:
        low = gs[1].subgridspec(1, len(bottom))
        k = 0
        if agreement:
            _draw_agreement(fig.add_subplot(low[0, k]), agreement)
            k += 1
        if faithfulness:
            _draw_faithfulness(fig.add_subplot(low[0, k]), faithfulness)
    date = date or datetime.date.today().isoformat()
    fig.suptitle(
        f"{image_name or '(unnamed image)'}   {date}   histoview {__version__}", fontsize=10
    )
    notices = [RESEARCH_NOTICE] + (
        [SYNTHETIC_NOTICE] if any(e.synthetic for e in explanations) else []
    )
    fig.supxlabel("\n".join(notices), fontsize=9, color="darkred")
    return fig


def _write_figure(fig, path, fmt: str, overwrite: bool, numbered: bool, **kwargs) -> Path:
    writer = atomic_write(path, "wb", overwrite=overwrite, numbered=numbered)
    with writer as fh:
        fig.savefig(fh, format=fmt, **kwargs)
    return writer.path


def save_png(
    fig,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    numbered: bool = False,
    dpi: int = 150,
) -> Path:
    """Write ``fig`` as a PNG, whole or not at all; returns the path written.

    An existing ``path`` raises FileExistsError, unless ``overwrite`` (replace it) or
    ``numbered`` (take the next free name, ``a-1.png``...: :func:`histoview.io.files.unique_path`).
    """
    from histoview import RESEARCH_NOTICE

    return _write_figure(
        fig,
        path,
        "png",
        overwrite,
        numbered,
        dpi=dpi,
        metadata={"Software": "histoview", "Disclaimer": RESEARCH_NOTICE},
    )


def save_pdf(
    fig, path: str | os.PathLike, *, overwrite: bool = False, numbered: bool = False
) -> Path:
    """Write ``fig`` as a one-page PDF with extractable text (TrueType fonts, ``pdf.fonttype`` 42).

    Existing files as in :func:`save_png`; returns the path written.
    """
    from matplotlib import rc_context

    from histoview import RESEARCH_NOTICE, __version__

    with rc_context({"pdf.fonttype": 42}):
        return _write_figure(
            fig,
            path,
            "pdf",
            overwrite,
            numbered,
            dpi=200,
            metadata={"Creator": f"histoview {__version__}", "Subject": RESEARCH_NOTICE},
        )
