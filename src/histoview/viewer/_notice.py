"""The canvas notice: each explanation's title, then the research-use line.

napari's text overlay neither wraps nor follows the canvas, so :func:`set_notice` wraps the
lines to the canvas's width (:func:`notice_text`) and wraps them again when that width
changes (a dock opened or closed beside the canvas), as long as nobody else changed the text.
"""

from __future__ import annotations

import weakref

from histoview import RESEARCH_NOTICE

#: canvas pixels per character of the notice's 10-point text (measured under Xvfb: 9.4)
NOTICE_CHAR_PX = 10


def notice_text(titles: list[str], canvas_width: int | None) -> str:
    """The canvas notice: each overlay's title, then the research-use line, wrapped to fit
    ``canvas_width`` pixels (napari's text overlay does not wrap; continuation lines are
    indented), so that no title is cut off at the canvas's edge."""
    import textwrap

    width = max(10, int(((canvas_width or 800) - 20) / NOTICE_CHAR_PX))  # a narrow canvas too
    lines = []
    for line in [*titles, RESEARCH_NOTICE]:
        lines += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


#: viewer -> [the titles of its notice, the text set]: re-wrapped when the canvas's width
#: changes (another dock opens or closes), unless the text was changed since
_NOTICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _canvas_width(viewer) -> int | None:
    size = getattr(getattr(viewer, "canvas", None), "size", None)  # (height, width)
    return int(size[1]) if size else None


def _rewrap_notice(viewer) -> None:
    titles, text = _NOTICES.get(viewer) or (None, None)
    overlay = viewer_text_overlay(viewer)
    if titles is not None and overlay.text == text:
        _NOTICES[viewer][1] = overlay.text = notice_text(titles, _canvas_width(viewer))


def set_notice(viewer, layers) -> None:
    """Show the titles of ``layers``' explanations and the research-use line on the canvas."""
    set_notice_titles(
        viewer, [lay.name for lay in layers if "histoview_explanation" in lay.metadata]
    )


def set_notice_titles(viewer, titles: list[str]) -> None:
    """Show ``titles`` and the research-use line on the canvas (wrapped to its width)."""
    overlay = viewer_text_overlay(viewer)
    overlay.text = notice_text(titles, _canvas_width(viewer))
    if viewer not in _NOTICES:
        from histoview.viewer._compat import canvas_size_event

        size_event = canvas_size_event(viewer)
        if size_event is not None:
            ref = weakref.ref(viewer)
            size_event.connect(lambda _e: ref() is not None and _rewrap_notice(ref()))
    _NOTICES[viewer] = [titles, overlay.text]
    overlay.visible = True
    overlay.position = "top_left"
    overlay.font_size = 10
    overlay.color = "white"


def viewer_text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9, else ``text_overlay``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "text", None) or viewer.text_overlay
