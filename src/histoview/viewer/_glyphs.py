"""The canvas's text glyphs made ahead of time, their distance fields off the main thread.

napari draws canvas text (overlay titles and warnings, colour-bar ticks, the scale bar) with
signed-distance glyphs that it makes on the main thread the first time a character is drawn
on a canvas (``QtTextureFont._load_char``: Qt paints the character at 256 pt, the distance
field is computed on the CPU, and the kerning against every glyph made so far is measured).
That is ~15 ms per character on a 2-core CPU, whatever the GPU, 92 % of it the distance
field: the first overlay title took ~0.5 s to appear, of which ~0.35 s were its glyphs.

:func:`warm` makes the glyphs of :data:`CHARACTERS` for every napari canvas not yet warmed
while the user reads the dock that was just opened:

* on the main thread, a few characters per event-loop turn: Qt paints the character (Qt's
  font machinery stays on the GUI thread), and once its field is ready napari's own
  ``_load_glyph_qt`` records the glyph and its kerning and the field is copied into the
  font's atlas (~1-2 ms per character);
* in one background thread: the distance field, by vispy's own ``SDFRendererCPU`` into a
  plain array (no OpenGL), kept per font and character for every later canvas.

A glyph made early is the very glyph napari would make later (same font, same field, same
kerning), so nothing drawn changes; only when and where it is computed does. A character
napari draws before its turn it makes itself, as before.
"""

from __future__ import annotations

import string
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

#: what histoview's texts are written in: ASCII letters, digits, punctuation and space, the
#: few other characters its titles, colour bars and scale bar use, and the capitals with
#: diacritics vispy measures every text's height with (``vispy.visuals.text._text_to_vbo``)
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " µ–·≥≤±×ÅÉÑŐ"
#: characters painted, and characters placed in the atlas, per event-loop turn
PER_TURN = 4
#: the warm-up timer's interval while fields are computed (ms)
INTERVAL_MS = 5

_WARMED: weakref.WeakSet = weakref.WeakSet()
_TIMERS: set = set()  # running warm-up timers (kept here so that Python keeps them alive)
#: (face, size, bold, italic, character) -> the glyph's distance field, ready for the atlas
_FIELDS: dict[tuple, np.ndarray] = {}
_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoview-glyphs")
    return _POOL


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


def _key(font, char: str) -> tuple:
    f = font._font
    return (f.get("face"), f.get("size"), f.get("bold"), f.get("italic"), char)


def _padded(font, bitmap: np.ndarray) -> np.ndarray:
    """The glyph's bitmap with the field's border around it (as napari's ``_load_char``)."""
    s = font._spread
    data = np.zeros((bitmap.shape[0] + 2 * s, bitmap.shape[1] + 2 * s), np.uint8)
    data[s:-s, s:-s] = bitmap
    return data


def _field(renderer, data: np.ndarray, ratio: int) -> np.ndarray:
    """The distance field of ``data`` at the atlas's resolution (background thread)."""
    w, h = data.shape[1] // ratio, data.shape[0] // ratio
    out = np.zeros((h, w, 3), np.uint8)
    renderer.render_to_texture(data, out, (0, 0), (w, h))  # vispy's own CPU renderer
    return out


def _paint(font, char: str) -> np.ndarray:
    """Qt's bitmap of ``char`` in ``font`` (main thread; napari's own painting)."""
    from napari._vispy.utils.qt_font import _load_glyph_qt

    scratch: dict = {}
    _load_glyph_qt(font._qfont, font._metrics, char, scratch)
    return scratch[char]["bitmap"]


def _place(font, char: str, field: np.ndarray) -> bool:
    """Add ``char``'s glyph to ``font`` with a field computed ahead (main thread): napari's
    glyph record and kerning, the field copied into the atlas. False when napari made it
    meanwhile or the painting differs from the one the field was computed from."""
    from napari._vispy.utils.qt_font import _load_glyph_qt

    if char in font._glyphs:
        return False
    # napari's record and kerning both ways (the others' records get theirs against ``char``);
    # the new record goes into the font only once its field is in the atlas
    glyphs = dict(font._glyphs)
    _load_glyph_qt(font._qfont, font._metrics, char, glyphs)
    glyph = glyphs[char]
    data = _padded(font, glyph["bitmap"])
    h, w = data.shape[0] // font.ratio, data.shape[1] // font.ratio
    if field.shape[:2] != (h, w):
        return False
    region = font._atlas.get_free_region(w + 2, h + 2)
    if region is None:
        raise RuntimeError("Cannot store glyph")
    x, y = region[0] + 1, region[1] + 1
    font._atlas[y : y + h, x : x + w, :] = field
    shape = font._atlas.shape
    glyph.update(
        {
            "size": (w, h),
            "texcoords": (x / shape[1], y / shape[0], (x + w) / shape[1], (y + h) / shape[0]),
        }
    )
    font._glyphs[char] = glyph
    return True


class _Warmer:
    """One font's warm-up: paint, compute in the background, place; a timer drives it."""

    def __init__(self, canvas, font, per_turn: int):
        from qtpy.QtCore import QTimer

        self.canvas, self.font, self.per_turn = weakref.ref(canvas), font, per_turn
        self.todo = missing(font)
        self.pending: list[tuple[str, Future | np.ndarray]] = []
        self.timer = QTimer()
        self.timer.setInterval(INTERVAL_MS)
        self.timer.timeout.connect(self.step)
        _TIMERS.add(self)

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        for _, job in self.pending:
            if isinstance(job, Future):
                job.cancel()
        self.todo.clear()
        self.pending.clear()
        _TIMERS.discard(self)

    def step(self) -> None:
        canvas = self.canvas()
        try:
            if canvas is None or not _shown(canvas):  # closed or hidden: stop for now
                if canvas is not None:
                    _WARMED.discard(canvas)  # a later warm() takes it once shown again
                self.stop()
                return
            self._place_ready()
            self._start_next()
        except Exception:  # e.g. the glyph atlas is full: napari makes the rest itself
            self.stop()
            return
        if not self.todo and not self.pending:
            self.stop()

    def _start_next(self) -> None:
        font = self.font
        for _ in range(min(self.per_turn, len(self.todo))):
            char = self.todo.pop(0)
            if char in font._glyphs:
                continue
            key = _key(font, char)
            with _LOCK:
                known = _FIELDS.get(key)
            if known is not None:
                self.pending.append((char, known))
                continue
            data = _padded(font, _paint(font, char))
            self.pending.append(
                (char, _pool().submit(_compute, key, font._renderer, data, font.ratio))
            )

    def _place_ready(self) -> None:
        placed = 0
        while self.pending and placed < self.per_turn:
            char, job = self.pending[0]
            if isinstance(job, Future):
                if not job.done():
                    return  # in order: the fields come back in the order they were asked
                field = job.result()
            else:
                field = job
            self.pending.pop(0)
            placed += _place(self.font, char, field)


def _compute(key: tuple, renderer, data: np.ndarray, ratio: int) -> np.ndarray:
    field = _field(renderer, data, ratio)
    with _LOCK:
        _FIELDS[key] = field
    return field


def warm(per_turn: int = PER_TURN) -> int:
    """Start making the glyphs of every napari canvas not yet warmed (a Qt timer on the main
    thread, the distance fields in a background thread); returns how many canvases are being
    warmed. Idempotent: a canvas is warmed once; warming stops when it closes."""
    fonts = _fonts()
    for canvas, font in fonts:
        _WARMED.add(canvas)
        _Warmer(canvas, font, per_turn).start()
    return len(fonts)
