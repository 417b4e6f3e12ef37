"""The explanation report: every method on one image, on A4 or US Letter pages (PNG or PDF).

:func:`render_figure` lays out a :class:`Report` of one page (several when there are many
methods) of the paper size of the user's locale (:func:`default_paper`) or the one asked for:

* a header with the file name, image size and pixel size, the date, histoview's version
  and the research-use line (plus the synthetic-weights notice where it applies);
* per explanation a panel: its title, the prediction with its probability, the model and
  the short weights hash, the tissue with the overlay, a micrometre scale bar (when the pixel
  size is known), the colour bar beside the tissue and a legend of what its values mean
  (the registry's :attr:`~histoview.explain.methods.Method.values`); a thresholded map
  (DT Grad-CAM) shows only the region above its threshold, outlined, with the threshold
  marked on the colour bar; a map without contrast says so instead of painting the tissue;
* the agreement table (Spearman rank correlation and top-10 % IoU,
  :func:`~histoview.explain.agreement.agreement_table`), computed here when not given;
* faithfulness as small multiples: one deletion + insertion plot per method with its areas
  under the curves (:mod:`histoview.explain.faithfulness`), so overlapping curves of
  different methods never hide each other.

Colours follow the viewer's side-by-side convention: each overlay uses its method's colour
map (:attr:`~histoview.explain.methods.Method.colormap`) with values min-max normalised per
explanation to [0, 1] (:func:`~histoview.explain.agreement.normalise`): 0 is the lowest value
of that explanation on this image, 1 the highest. Patch and dense maps are blended into the
tissue with an opacity growing with the value; nuclei are their outlines filled by value.

The page layout lives in :mod:`histoview.explain._report_pages`, the drawing of its
blocks in :mod:`histoview.explain._report_panels` and
:mod:`histoview.explain._report_comparison`. Pages are
:class:`matplotlib.figure.Figure` objects on the Agg canvas, never pyplot, so
rendering never touches a GUI backend. PDFs keep their text as text (TrueType,
``pdf.fonttype`` 42), so it can be searched and extracted; every file goes through
:func:`histoview.io.files.atomic_write` (whole or not at all, never a silent overwrite).
"""

from __future__ import annotations

import datetime
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain._report_common import (
    MIN_TISSUE_IN,
    SHRINK,
    TISSUE_DPI,
    check_paper,
    default_paper,
)
from histoview.explain.agreement import distinct_labels, method_labels
from histoview.explain.base import Explanation
from histoview.io.files import atomic_write


def panel_titles(explanations: Sequence[Explanation]) -> list[str]:
    """Each method's registry title; where titles repeat, the model, then ``#k``, added."""
    from histoview.explain.methods import method_title

    return distinct_labels([method_title(e.method) for e in explanations], explanations)


# -- the report ------------------------------------------------------------------------------------
@dataclass
class Report:
    """The pages of a report, :class:`matplotlib.figure.Figure` objects of one paper size.

    ``savefig(fh, format="pdf")`` writes every page into one PDF; ``format="png"`` writes the
    pages one below the other in one picture (one page: exactly that page).
    """

    pages: list
    paper: str
    orientation: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def axes(self) -> list:
        return [ax for page in self.pages for ax in page.axes]

    def savefig(self, fh, *, format: str, dpi: float = 150, metadata: dict | None = None):
        if format == "pdf":
            from matplotlib.backends.backend_pdf import PdfPages

            with PdfPages(fh, metadata=metadata) as pdf:
                for page in self.pages:
                    pdf.savefig(page, dpi=TISSUE_DPI)  # the tissue pictures' resolution
            return
        if format != "png":
            raise ValueError(f"format must be 'pdf' or 'png', got {format!r}")
        if len(self.pages) == 1:
            self.pages[0].savefig(fh, format="png", dpi=dpi, metadata=metadata)
            return
        from PIL import Image, PngImagePlugin

        pictures = []
        for page in self.pages:
            buf = io.BytesIO()
            page.savefig(buf, format="png", dpi=dpi)
            buf.seek(0)
            with Image.open(buf) as im:
                pictures.append(np.asarray(im.convert("RGB")))
        gap = np.full((max(2, round(dpi * 0.1)), pictures[0].shape[1], 3), 160, np.uint8)
        stacked = np.concatenate([x for p in pictures for x in (p, gap)][:-1], axis=0)
        info = PngImagePlugin.PngInfo()
        for k, v in (metadata or {}).items():
            info.add_text(k, str(v))
        Image.fromarray(stacked).save(fh, format="PNG", pnginfo=info)


def render_figure(
    image: np.ndarray,
    explanations: Sequence[Explanation] | Explanation,
    *,
    titles: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    image_name: str = "",
    agreement: Mapping[str, Any] | bool | None = None,
    faithfulness: Mapping[str, Any] | None = None,
    date: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.55,
    max_display_side: int = 1024,
    paper: str | None = None,
    orientation: str = "auto",
) -> Report:
    """The report of ``explanations`` of ``image``, laid out on A4 or US Letter pages.

    Args:
        image: (H, W, 3) uint8, the image explained (any level: overlays are scaled to it).
        explanations: one explanation or several of the same image, in panel order.
        titles: panel titles (default :func:`panel_titles`: the registry's titles).
        pixel_size_um: micrometres per pixel of ``image``, for the scale bar (none if unknown).
        image_name: file name shown on the page.
        agreement: a record of :func:`~histoview.explain.agreement.agreement_table` whose
            methods are the explanations' :func:`~histoview.explain.agreement.method_labels`
            (shown in panel order); None, or a record of other explanations: computed here
            for two or more explanations; False: left out.
        faithfulness: method label -> :class:`~histoview.explain.faithfulness.FaithfulnessResult`
            (or its ``to_dict()``); labels of other explanations are left out.
        date: date shown (default today, ISO format).
        cmap: one colour map for every overlay (default: each method's, as in the viewer).
        alpha: the overlays' largest opacity.
        max_display_side: the tissue is downsampled to at most this many pixels per side.
        paper: ``"a4"`` or ``"letter"`` (default :func:`default_paper`: setting or locale).
        orientation: ``"portrait"``, ``"landscape"`` or ``"auto"``. Layouts (orientation,
            1 to 4 columns, tissue sizes :data:`SHRINK`) are ranked by: tissue panels at least
            :data:`MIN_TISSUE_IN` inches, the fewest pages, the largest tissue, portrait.

    Returns:
        A :class:`Report`; its ``pages`` are figures of exactly the paper size.
    """
    from matplotlib import colormaps

    from histoview import __version__
    from histoview.explain import _report_pages as pages
    from histoview.explain._report_canvas import Content
    from histoview.explain.methods import METHODS

    if isinstance(explanations, Explanation):
        explanations = [explanations]
    explanations = list(explanations)
    if not explanations:
        raise ValueError("no explanations to draw")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    titles = list(titles) if titles is not None else panel_titles(explanations)
    if len(titles) != len(explanations):
        raise ValueError(f"{len(titles)} titles for {len(explanations)} explanations")
    paper = check_paper(paper) if paper else default_paper()
    if orientation not in ("auto", "portrait", "landscape"):
        raise ValueError(f"orientation must be auto, portrait or landscape, got {orientation!r}")
    labels = method_labels(explanations)

    def colormap(expl: Explanation):
        name = cmap or (METHODS[expl.method].colormap if expl.method in METHODS else "inferno")
        return colormaps[name]

    H, W = image.shape[:2]
    n = len(explanations)
    size = f"{W} x {H} px, " + (
        f"{pixel_size_um:.3g} µm/px" if pixel_size_um else "pixel size unknown (no scale bar)"
    )
    date = date or datetime.date.today().isoformat()
    content = Content(
        image=image,
        explanations=explanations,
        titles=titles,
        label_title=dict(zip(labels, titles)),
        pixel_size_um=pixel_size_um,
        image_name=image_name or "(unnamed image)",
        subtitle=f"{size}   {date}   histoview {__version__}   "
        f"{n} explanation{'s' if n > 1 else ''}",
        synthetic=any(e.synthetic for e in explanations),
        agreement=_agreement_in_panel_order(explanations, labels, agreement),
        faithfulness={k: v for k, v in (faithfulness or {}).items() if k in labels},
        colormap=colormap,
        alpha=alpha,
        max_display_side=max_display_side,
    )
    options = ("portrait", "landscape") if orientation == "auto" else (orientation,)
    layouts = [
        pages.lay_out(content, paper, o, c, s)
        for o in options
        for c in pages.column_choices(len(explanations), o)
        for s in SHRINK
    ]
    best = min(layouts, key=_layout_rank)
    figures = pages.draw_pages(best, content)
    info = {
        "tissue_in": best.tissue_in,
        "labels": labels,
        "titles": titles,
        "agreement": content.agreement,
    }
    return Report(figures, best.paper, best.orientation, info)


def _layout_rank(layout) -> tuple:
    """Layouts compared: tissue panels not too small, then the fewest pages, then the largest
    tissue panels (``min`` keeps the first of ties: portrait, fewer columns)."""
    tw, th = layout.tissue_in
    return (max(tw, th) < MIN_TISSUE_IN, len(layout.pages), -tw * th)


def _agreement_in_panel_order(explanations, labels, agreement) -> dict | None:
    """The agreement record in panel order: the one given when it covers the same labels,
    else computed (two or more explanations); None when left out."""
    from histoview.explain.agreement import agreement_table

    if agreement is False or len(explanations) < 2:
        return None
    if agreement and sorted(agreement["methods"]) == sorted(labels):
        index = [list(agreement["methods"]).index(lab) for lab in labels]
        out = dict(agreement)
        out["methods"] = list(labels)
        for key in ("spearman", "topk_iou"):
            out[key] = [[agreement[key][i][j] for j in index] for i in index]
        if agreement.get("explains"):
            out["explains"] = [agreement["explains"][i] for i in index]
        return out
    return agreement_table(dict(zip(labels, explanations)))


# -- files -----------------------------------------------------------------------------------------
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
    """Write a :class:`Report` (its pages one below the other) or a figure as a PNG, whole or
    not at all; returns the path written.

    An existing ``path`` raises FileExistsError, unless ``overwrite`` (replace it) or
    ``numbered`` (take the next free name, ``a-1.png``...: :func:`histoview.io.files.unique_path`).
    """
    from histoview import RESEARCH_NOTICE

    metadata = {"Software": "histoview", "Disclaimer": RESEARCH_NOTICE}
    return _write_figure(fig, path, "png", overwrite, numbered, dpi=dpi, metadata=metadata)


def save_pdf(
    fig, path: str | os.PathLike, *, overwrite: bool = False, numbered: bool = False
) -> Path:
    """Write a :class:`Report` (a PDF page per page) or a figure as a PDF with extractable
    text (TrueType fonts, ``pdf.fonttype`` 42).

    Existing files as in :func:`save_png`; returns the path written.
    """
    from matplotlib import rc_context

    from histoview import RESEARCH_NOTICE, __version__

    metadata = {"Creator": f"histoview {__version__}", "Subject": RESEARCH_NOTICE}
    kwargs = {} if isinstance(fig, Report) else {"dpi": TISSUE_DPI}
    with rc_context({"pdf.fonttype": 42}):
        return _write_figure(fig, path, "pdf", overwrite, numbered, metadata=metadata, **kwargs)
