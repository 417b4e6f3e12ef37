"""The explanation panels of the report: title, tissue with the map, colour bar and legend.

:func:`_panel` says what a panel shows (prediction, model, weights, what the colours
mean, the threshold); :func:`_draw_panel` draws it: heatmaps blended into the tissue
(more opaque where higher), nuclei graphs as filled nuclei over faint edges, the
threshold's outline, a scale bar and a 0-1 colour bar with the threshold marked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoview.explain._report_canvas import (
    CB_GAP,
    CB_W,
    LEGEND_PT,
    LINE,
    SUB_PT,
    TITLE_PT,
    Content,
    Page,
    wrap,
)
from histoview.explain._report_common import (
    MAX_EDGES_DRAWN,
    normalised_threshold,
    scale_bar_length_um,
    short_hash,
)
from histoview.explain.agreement import normalise
from histoview.explain.base import Explanation, NucleiPoints
from histoview.explain.display import format_probability, has_contrast


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
