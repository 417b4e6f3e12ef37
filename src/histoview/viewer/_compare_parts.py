"""The compare view's parts that need no widget: the worker generators, layer grouping, display.

* :func:`run_all_work` / :func:`analysis_work` - generators run in a napari worker thread:
  they yield progress and new explanations *with their layer data ready*
  (:func:`~histoview.viewer.overlays.explanation_layer_data`) and return the agreement
  table, the faithfulness curves and the faithfulness figure already drawn (Agg); they
  never touch layers, so the main thread only adds prepared layers.
* :func:`explanation_groups` - the layers each explanation drew (nuclei: points, edges and
  outlines), so that the side-by-side grid keeps them in one panel.
* :func:`refresh_overlay` - what an overlay layer shows: raw values (stacked) or values
  min-max normalised per method to [0, 1] (side by side, so that every panel shares one
  colour scale), with values under the live threshold hidden.
* :func:`grid_shape` - the rows x columns that make the panels largest.
* :func:`draw_faithfulness` / :func:`fill_agreement_table` - the results in the dock.

**The colour scale** (viewer side by side, PNG and PDF report alike,
:mod:`histoview.explain.report`): each explanation's values are min-max normalised on this
image, 0 its lowest value and 1 its highest, drawn with its method's colour map
(:attr:`~histoview.explain.methods.Method.colormap`); what the raw values are, per method,
is :attr:`~histoview.explain.methods.Method.values` (:func:`colour_legend`). A map whose
values barely differ (:func:`~histoview.explain.display.has_contrast`) is not painted and
says "no contrast".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from histoview.viewer.overlays import read_layer_for_model, viewer_text_overlay

#: faithfulness steps: enough for a curve, few enough to stay interactive
FAITHFULNESS_STEPS = 10
#: per-layer state kept by the compare view: metadata key
STATE_KEY = "histoview_compare"


# -- worker generators ------------------------------------------------------------------------
def run_all_work(
    data,
    multiscale: bool,
    pixel_size_um: float | None,
    methods: Sequence[str],
    load: Callable,
    steps: int = FAITHFULNESS_STEPS,
    where=None,
):
    """Explain with every method whose weights load, then compare them.

    ``where``: the :class:`~histoview.viewer.overlays.Placement` of the image layer, for the
    overlays' layer data (None: no layer data). Yields ``("progress", done, total, text)``
    and ``("explanation", expl, layer_data, predict, rgb)``; returns :func:`analysis_work`'s
    record plus ``"skipped"``: one line per method whose ``load(method)`` raised (e.g. no
    bundled weights). Methods whose weights are one checkpoint (Grad-CAM and DT Grad-CAM)
    share one predictor, so faithfulness predicts an input they share once.
    """
    from histoview.explain.methods import get_method, method_title
    from histoview.explain.run import explain_array
    from histoview.viewer.overlays import explanation_layer_data

    total = len(methods) + 1
    items, skipped, predictors = [], [], {}
    for i, method in enumerate(methods):
        yield "progress", i, total, f"{method}: loading weights"
        try:
            net, meta, sha = load(method)
        except Exception as exc:  # missing weights: list the method, go on with the others
            skipped.append(f"{method} ({exc})")
            continue
        rgb, ds, level, shape0 = read_layer_for_model(data, multiscale, pixel_size_um, meta)
        mpp = pixel_size_um * ds if pixel_size_um else None
        factory = get_method(method).predictor
        key = (sha, factory, mpp) if sha else (id(net), factory, mpp)
        if key in predictors:
            net = predictors[key][0]  # the same weights: one model, one predictor
        yield "progress", i, total, f"running {method_title(method)}"
        expl = explain_array(
            rgb,
            method,
            net,
            meta,
            sha,
            pixel_size_um=mpp,
            downsample=ds,
            level=level,
            image_shape=shape0,
        )
        if key not in predictors:
            predictors[key] = (net, factory(net, meta, pixel_size_um=mpp))
        predict = predictors[key][1]
        layer_data = explanation_layer_data(expl, where) if where is not None else None
        yield "explanation", expl, layer_data, predict, rgb
        items.append((expl, predict, rgb))
    if not items:
        return {
            "agreement": None,
            "faithfulness": {},
            "notes": [],
            "labels": [],
            "skipped": skipped,
            "figure": render_faithfulness({}),
        }
    result = yield from analysis_work(items, steps, done=len(methods), total=total + len(items))
    result["skipped"] = skipped
    return result


def analysis_work(
    items: Sequence[tuple],
    steps: int = FAITHFULNESS_STEPS,
    *,
    done: int = 0,
    total: int | None = None,
):
    """Agreement table and faithfulness curves of ``items`` = ``(expl, predict or None, rgb)``.

    Yields ``("progress", done, total, text)``; returns ``{"agreement", "faithfulness",
    "notes", "labels", "figure"}`` (faithfulness: label -> FaithfulnessResult, for items with
    a model; figure: :func:`render_faithfulness`).
    """
    from histoview.explain.agreement import agreement_table, method_labels
    from histoview.explain.faithfulness import deletion_insertion

    expls = [it[0] for it in items]
    labels = method_labels(expls)
    total = total if total is not None else len(items) + 1
    yield "progress", done, total, "agreement: Spearman and top-10 % IoU"
    agreement = agreement_table(dict(zip(labels, expls)), fraction=0.1)
    faithfulness, notes = {}, []
    for k, (label, (expl, predict, rgb)) in enumerate(zip(labels, items)):
        if predict is None or rgb is None:
            notes.append(f"{label}: no model loaded here, faithfulness skipped")
            continue
        yield "progress", done + 1 + k, total, f"faithfulness: {label}"
        faithfulness[label] = deletion_insertion(expl, predict, rgb, steps=steps)
    yield "progress", done + len(items), total, "drawing the faithfulness curves"
    return {
        "agreement": agreement,
        "faithfulness": faithfulness,
        "notes": notes,
        "labels": labels,
        "figure": render_faithfulness(faithfulness),
    }


# -- layers -----------------------------------------------------------------------------------
def role(layer) -> str | None:
    """``"tissue"`` / ``"outline"`` for the panel layers the compare view adds, else None."""
    return (layer.metadata.get(STATE_KEY) or {}).get("role")


def explanation_layers(layers) -> list:
    """The layers that hold an Explanation (one per explanation), bottom to top."""
    return [lay for lay in layers if "histoview_explanation" in lay.metadata and role(lay) is None]


def base_shape(layer) -> tuple[int, int]:
    data = layer.data[0] if layer.multiscale else layer.data
    return tuple(int(v) for v in data.shape[:2])


def explanation_groups(layers, base) -> list[list]:
    """Per explanation of ``base``: its layers (main layer, edges, outlines), bottom to top.

    An explanation belongs to ``base`` when it was drawn over a layer of that name
    (or, when none was, over an image of the same size).
    """
    mains = explanation_layers(layers)

    def over(lay):
        return (lay.metadata.get("histoview") or {}).get("explanation", {}).get("image_layer")

    mine = [m for m in mains if over(m) == base.name]
    if not mine:
        shape = base_shape(base)
        mine = [m for m in mains if tuple(m.metadata["histoview_explanation"].image_shape) == shape]
    groups = []
    for main in mine:
        summary = (main.metadata.get("histoview") or {}).get("explanation")

        def member(lay, main=main, summary=summary) -> bool:
            if lay.unique_id == main.unique_id:
                return True
            if role(lay) is not None or "histoview_explanation" in lay.metadata:
                return False
            own = (lay.metadata.get("histoview") or {}).get("explanation")
            return (summary is not None and own is summary) or lay.name.startswith(main.name + ": ")

        members = [lay for lay in layers if member(lay)]
        groups.append(members)
    return groups


def grid_shape(
    n: int,
    canvas_hw: tuple[float, float] | None,
    image_hw: tuple[float, float],
    margins_hw: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int]:
    """Rows and columns for ``n`` panels that make each panel's image largest on the canvas,
    each panel keeping ``margins_hw`` canvas pixels (title above, colour bar beside)."""
    if n <= 1:
        return 1, 1
    ch, cw = canvas_hw or (900.0, 1200.0)
    ih, iw = max(image_hw[0], 1), max(image_hw[1], 1)
    mh, mw = margins_hw
    best, best_size = (1, n), -1.0
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        if (rows - 1) * cols >= n:  # an empty row
            continue
        size = min((cw / cols - mw) / iw, (ch / rows - mh) / ih)
        if size > best_size * 1.001:
            best, best_size = (rows, cols), size
    return best


def state(layer) -> dict:
    """The compare view's record of an overlay layer; created with its raw values the first time."""
    st = layer.metadata.get(STATE_KEY)
    if st is None:
        from napari.layers import Points

        if isinstance(layer, Points):
            raw = np.asarray(layer.features["importance"], np.float32).copy()
            limits = tuple(layer.face_contrast_limits or (0.0, 1.0))
        else:
            raw = np.asarray(layer.data, np.float32)
            limits = tuple(layer.contrast_limits)
        st = {"raw": raw, "limits": limits, "threshold": initial_threshold(layer, raw)}
        layer.metadata[STATE_KEY] = st
    return st


def initial_threshold(layer, raw: np.ndarray) -> float | None:
    """The explanation's own threshold (DT Grad-CAM), on the [0, 1] normalised scale."""
    expl = layer.metadata.get("histoview_explanation")
    if expl is None or expl.threshold is None:
        return None
    values = np.asarray(expl.values, np.float64)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    return float(np.clip((expl.threshold - lo) / (hi - lo), 0, 1)) if hi > lo else None


def refresh_overlay(layer, normalised: bool) -> None:
    """Show raw or normalised values; hide those under the layer's threshold.

    The threshold is on the normalised scale: ``t`` keeps values >= ``lo + t (hi - lo)``
    of the method's own range, so the same ``t`` means the same on every method.
    """
    from napari.layers import Points

    from histoview.explain.agreement import normalise

    st = state(layer)
    raw = st["raw"]
    norm = normalise(raw)
    thr = st.get("threshold")
    keep = np.ones(raw.shape, bool) if not thr or thr <= 0 else np.isfinite(norm) & (norm >= thr)
    if isinstance(layer, Points):
        feats = layer.features
        feats["normalised importance"] = norm
        layer.features = feats
        layer.face_color = "normalised importance" if normalised else "importance"
        layer.face_contrast_limits = (0.0, 1.0) if normalised else st["limits"]
        layer.shown = keep
        return
    shown = norm if normalised else raw
    layer.data = np.where(keep, shown, np.nan).astype(np.float32)
    layer.contrast_limits = (0.0, 1.0) if normalised else st["limits"]


def threshold_text(layer, thr: float | None) -> str:
    """The value label: the normalised threshold and what it is in the method's own units."""
    if layer is None:
        return "no heatmap selected"
    if not thr or thr <= 0:
        return "threshold: off (all values shown)"
    raw = state(layer)["raw"]
    finite = raw[np.isfinite(raw)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return f"showing values >= {thr:.2f} of the range (raw >= {lo + thr * (hi - lo):.4g})"


# -- the side-by-side layout -----------------------------------------------------------------
def grid_of(viewer):
    """napari's grid model (``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def colorbar(layer):
    """The colour bar overlay of an image layer (``colorbar``) or points (``face_colorbar``)."""
    for attr in ("face_colorbar", "colorbar"):
        if hasattr(layer, attr):
            return getattr(layer, attr)
    return None


def notice_for_grid(viewer) -> dict:
    """Put the research-use notice below the panels (the titles take their tops); returns
    the overlay's previous settings."""
    from histoview import RESEARCH_NOTICE

    ov = viewer_text_overlay(viewer)
    saved = {k: getattr(ov, k) for k in ("text", "visible", "position", "font_size")}
    ov.text = RESEARCH_NOTICE
    ov.position, ov.font_size, ov.visible = "bottom_left", 9, True
    return saved


def restore_notice(viewer, saved: dict) -> None:
    ov = viewer_text_overlay(viewer)
    for k, v in saved.items():
        setattr(ov, k, v)


def reorder(layers, order: list) -> None:
    """Move ``layers`` into ``order`` (bottom to top)."""
    for target, lay in enumerate(order):
        cur = layers.index(lay)
        if cur != target:
            layers.move(cur, target)


# -- exports ----------------------------------------------------------------------------------
def comparison_figure(base, expls, agreement, faithfulness):
    """:func:`histoview.explain.report.render_figure` of ``expls`` over the image ``base``."""
    from pathlib import Path

    from histoview.explain.agreement import method_labels
    from histoview.explain.methods import method_title
    from histoview.explain.report import render_figure
    from histoview.io import to_rgb8
    from histoview.viewer.overlays import layer_pixel_size

    data = base.data
    if base.multiscale:  # the coarsest level that still fills the figure
        data = next((d for d in reversed(base.data) if max(d.shape[:2]) >= 1024), base.data[0])
    image = to_rgb8(np.asarray(data))
    mpp = layer_pixel_size(base)
    if mpp and base.multiscale:
        mpp *= base.data[0].shape[0] / image.shape[0]
    labels = method_labels(expls)
    titles = [method_title(e.method) for e in expls]
    if len(set(titles)) < len(titles):
        titles = labels
    faith = {k: v for k, v in (faithfulness or {}).items() if k in labels}
    if not agreement or list(agreement["methods"]) != labels:
        agreement = None  # computed for other explanations: leave it out
    source = getattr(getattr(base, "source", None), "path", None)
    return render_figure(
        image,
        expls,
        titles=titles,
        pixel_size_um=mpp,
        image_name=Path(source).name if source else base.name,
        agreement=agreement,
        faithfulness=faith or None,
    )


def resolve_targets(paths: list, confirm: Callable[[str], bool]) -> tuple[list, bool]:
    """``(paths, overwrite)``: the paths when none exists or ``confirm`` allows overwriting,
    else free names (:func:`histoview.io.files.unique_path`) - never a silent overwrite."""
    from histoview.io.files import unique_path

    existing = [p for p in paths if p.exists()]
    if not existing:
        return list(paths), False
    names = ", ".join(p.name for p in existing)
    verb = "exists" if len(existing) == 1 else "exist"
    if confirm(f"{names} already {verb}. Overwrite?\n(No: save under a new name.)"):
        return list(paths), True
    return [unique_path(p) for p in paths], False


def annotation_paths(path, expls) -> list:
    """``<stem>.<method>.geojson`` and ``.csv`` per explanation, beside ``path``."""
    from pathlib import Path

    from histoview.explain.agreement import method_labels

    path = Path(path)
    stem = path.name.split(".")[0] or "annotations"
    names = [
        "".join(c if c.isalnum() or c in "-_" else "-" for c in lab) for lab in method_labels(expls)
    ]
    return [path.with_name(f"{stem}.{n}.{ext}") for n in names for ext in ("geojson", "csv")]


# -- results ----------------------------------------------------------------------------------
def fmt(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def fill_agreement_table(table, agreement: dict[str, Any] | None) -> None:
    """Methods x methods in a QTableWidget: Spearman above the diagonal, top-10 % IoU below."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QHeaderView, QTableWidgetItem

    table.clear()
    names = list(agreement["methods"]) if agreement else []
    table.setRowCount(len(names))
    table.setColumnCount(len(names))
    table.setHorizontalHeaderLabels(names)
    table.setVerticalHeaderLabels(names)
    for i in range(len(names)):
        for j in range(len(names)):
            rho, iou = agreement["spearman"][i][j], agreement["topk_iou"][i][j]
            item = QTableWidgetItem("-" if i == j else fmt(rho if j > i else iou))
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            item.setToolTip(
                f"{names[i]} vs {names[j]}: Spearman {fmt(rho)}, top-10 % IoU {fmt(iou)}"
            )
            table.setItem(i, j, item)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.resizeRowsToContents()
    rows = sum(table.rowHeight(i) for i in range(len(names)))
    table.setFixedHeight(table.horizontalHeader().height() + rows + 2 * table.frameWidth() + 2)


#: the dock's faithfulness figure: width (inches) and resolution
FAITHFULNESS_FIG_WIDTH_IN = 4.2
FAITHFULNESS_FIG_DPI = 100


def draw_faithfulness(fig, faithfulness: dict[str, Any]) -> None:
    """Deletion and insertion curves as small multiples: one plot per method (deletion
    solid, insertion dashed, their areas in the title), so curves of different methods that
    coincide (e.g. flat at 1) never hide each other."""
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


def colour_legend(methods: Sequence[str]) -> str:
    """One line per method: what 0 and 1 of the side-by-side colour scale are, and what its
    values are (:attr:`~histoview.explain.methods.Method.values`)."""
    from histoview.explain.methods import METHODS, method_title

    lines = [
        "Colour bars: each map scaled to its own range on this image "
        "(0 = its lowest value, 1 = its highest)."
    ]
    for m in dict.fromkeys(methods):
        values = METHODS[m].values if m in METHODS else ""
        lines.append(f"{method_title(m)}: {values}." if values else f"{method_title(m)}.")
    return "\n".join(lines)
