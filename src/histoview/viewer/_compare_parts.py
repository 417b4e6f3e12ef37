"""The compare view's layer parts that need no widget: layer grouping, overlays, the grid.

The worker generators are in :mod:`histoview.viewer._compare_running`, the agreement table
and faithfulness figure in :mod:`histoview.viewer._compare_results`, the exports in
:mod:`histoview.viewer._compare_exports`.

* :func:`explanation_groups` - the layers each explanation drew (nuclei: points, edges and
  outlines), so that the side-by-side grid keeps them in one panel.
* :func:`refresh_overlay` - what an overlay layer shows: raw values (stacked) or values
  min-max normalised per method to [0, 1] (side by side, so that every panel shares one
  colour scale), with values under the live threshold hidden.
* :func:`grid_shape` - the rows x columns that make the panels largest.

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
from collections.abc import Sequence

import numpy as np

# the compare view's per-layer record (metadata key) and its panel layers' role live with the
# layer updates, which must leave panel layers alone
from histoview.viewer._compat import grid_of  # noqa: F401
from histoview.viewer._layer_updates import STATE_KEY, role  # noqa: F401
from histoview.viewer._notice import viewer_text_overlay

#: faithfulness steps: enough for a curve, few enough to stay interactive
FAITHFULNESS_STEPS = 10

#: the compare dock's line above its agreement table
TABLE_NOTE = (
    "Spearman rank correlation above the diagonal, top-10 % IoU below (hover a cell for both)."
)


# -- layers -----------------------------------------------------------------------------------


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
    if st.get("norm") is None:  # the raw values never change: normalised once
        st["norm"] = normalise(raw)
    norm = st["norm"]
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
