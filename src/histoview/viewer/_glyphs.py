"""The canvas's text glyphs made ahead of time, a few per event-loop turn.

napari draws canvas text (overlay titles and warnings, colour-bar ticks, the scale bar) with
signed-distance glyphs that it makes on the main thread the first time a character is drawn
on a canvas (``QtTextureFont._load_char``: Qt paints the character at 256 pt, the distance
field is computed on the CPU, and the kerning against every glyph made so far is measured).
That is ~7-14 ms per character on a 2-core CPU, whatever the GPU: the first overlay title
took ~0.5 s to appear, of which ~0.35 s were its glyphs (~0.15 s after warming: its shader).

:func:`warm` makes the glyphs of :data:`CHARACTERS` for every napari canvas not yet warmed,
:data:`PER_TURN` characters per turn of the event loop, while the user reads the dock that
was just opened. A glyph made early is the very glyph napari would make later (same font,
same atlas), so nothing drawn changes; only when it is made does.

The distance fields stay on the main thread on purpose: computed in a background thread
(tried on 2026-12-03) they hold the GIL all the same (vispy's Cython field never releases
it), so they slowed the dock's own warm-up in its worker and the first click pressed at
once took ~2.3 s longer (4.3 -> 6.6 s), for a longest freeze ~0.1-0.2 s shorter
(docs/benchmarks.md). Those runs had the benchmark's stuck activity spinner, which costs most
where the main thread is otherwise idle, as it is here: measure again before relying on it.
"""

from __future__ import annotations

import string
import weakref

#: what histoview's texts are written in: ASCII letters, digits, punctuation and space, the
#: few other characters its titles, colour bars and scale bar use, and the capitals with
#: diacritics vispy measures every text's height with (``vispy.visuals.text._text_to_vbo``)
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " µ–·≥≤±×ÅÉÑŐ"
#: characters per event-loop turn (~10-25 ms of main-thread CPU each turn here)
PER_TURN = 2

_WARMED: weakref.WeakSet = weakref.WeakSet()
_TIMERS: set = set()  # running warm-up timers (kept here so that Python keeps them alive)


def _shown(canvas) -> bool:
    """Whether ``canvas`` is on screen (not closed, hidden or deleted by Qt)."""
    scene = getattr(canvas, "_scene_canvas", None)
    try:
        return bool(scene is not None and not scene._closed and scene.native.isVisible())
    except (AttributeError, RuntimeError):  # the Qt widget is gone
        return False


def _fonts():
    """(canvas, napari texture font) for each napari canvas on screen not yet warmed (a
    hidden canvas draws no text; a later :func:`warm` takes it once it is shown)."""
    try:
        from napari._vispy.canvas import VispyCanvas
    except ImportError:  # another napari layout: nothing to warm
        return []
    out = []
    for canvas in list(getattr(VispyCanvas, "_instances", ())):
        info = getattr(canvas, "_font_info", None)
        manager = getattr(info, "font_manager", None)
        if canvas in _WARMED or manager is None or not hasattr(manager, "get_font"):
            continue
        if not _shown(canvas):
            continue
        out.append((canvas, manager.get_font(info.face, False, False)))
    return out


def missing(font) -> list[str]:
    """The characters of :data:`CHARACTERS` that ``font`` has no glyph for yet."""
    made = getattr(font, "_glyphs", {})
    return [c for c in CHARACTERS if c not in made]


def warm(per_turn: int = PER_TURN) -> int:
    """Start making the glyphs of every napari canvas not yet warmed, ``per_turn``
    characters per event-loop turn (a zero-interval Qt timer); returns how many canvases
    are being warmed. Idempotent: a canvas is warmed once; warming stops when it closes."""
    from qtpy.QtCore import QTimer

    fonts = _fonts()
    for canvas, font in fonts:
        _WARMED.add(canvas)
        todo = missing(font)
        timer = QTimer()
        timer.setInterval(0)
        _TIMERS.add(timer)
        shown = weakref.ref(canvas)

        def step(todo=todo, font=font, timer=timer, shown=shown):
            canvas = shown()
            try:
                if canvas is None or not _shown(canvas):  # closed or hidden: stop for now
                    todo.clear()
                    if canvas is not None:
                        _WARMED.discard(canvas)  # a later warm() takes it once shown again
                for _ in range(min(per_turn, len(todo))):
                    font[todo.pop(0)]  # napari's font makes and keeps the glyph
            except Exception:  # e.g. the glyph atlas is full: napari makes the rest itself
                todo.clear()
            finally:
                if not todo:
                    timer.stop()
                    _TIMERS.discard(timer)

        timer.timeout.connect(step)
        timer.start()
    return len(fonts)
