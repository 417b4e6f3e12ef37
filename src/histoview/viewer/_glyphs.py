"""The canvas's text glyphs made ahead of time, a few per event-loop turn, their distance fields
kept on disk for the next session.

napari draws canvas text (overlay titles and warnings, colour-bar ticks, the scale bar) with
signed-distance glyphs that it makes on the main thread the first time a character is drawn
on a canvas (``QtTextureFont._load_char``: Qt paints the character at 256 pt, the distance
field is computed on the CPU, and the kerning against every glyph made so far is measured).
That is ~7-15 ms per character on a 2-core CPU, whatever the GPU, ~90 % of it the distance
field: the first overlay title took ~0.5 s to appear, of which ~0.35 s were its glyphs.

:func:`warm` makes the glyphs of :data:`CHARACTERS` for every napari canvas not yet warmed,
:data:`PER_TURN` characters per turn of the event loop, while the user reads the dock that
was just opened, as napari's ``_load_char`` makes them (napari's own ``_load_glyph_qt`` paints
the character and measures its kerning, vispy's own CPU renderer computes the field). Each
field is kept by the hash of the painted bitmap, in memory and in the user cache
(:data:`CACHE_NAME`, written whole or not at all), so a later session only paints (~1.5 ms
per character). A glyph made early is the very glyph napari would make later, so nothing
drawn changes; only when it is made does. With another renderer than vispy's CPU one, the
font makes its glyphs itself (napari's path), still a few per turn.

The distance fields stay on the main thread on purpose: computed in a background thread
(tried on 2026-12-03) they hold the GIL all the same (vispy's Cython field never releases
it), so they slowed the dock's own warm-up in its worker and the first click pressed at
once took ~2.3 s longer (4.3 -> 6.6 s), for a longest freeze ~0.1-0.2 s shorter
(docs/benchmarks.md). Those runs had the benchmark's stuck activity spinner, which costs most
where the main thread is otherwise idle, as it is here: measure again before relying on it.
"""

from __future__ import annotations

import hashlib
import os
import string
import weakref
import zipfile

import numpy as np

#: what histoview's texts are written in: ASCII letters, digits, punctuation and space, the
#: few other characters its titles, colour bars and scale bar use, and the capitals with
#: diacritics vispy measures every text's height with (``vispy.visuals.text._text_to_vbo``)
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " µ–·≥≤±×ÅÉÑŐ"
#: characters per event-loop turn (~10-25 ms of main-thread CPU each turn here)
PER_TURN = 2

#: the distance fields' file in the user cache (``$HISTOVIEW_CACHE_DIR`` overrides it)
CACHE_NAME = "glyph-fields-v1.npz"
#: at most this many fields are kept on disk (a new Qt or font paints other bitmaps)
CACHE_LIMIT = 2000

_WARMED: weakref.WeakSet = weakref.WeakSet()
_TIMERS: set = set()  # running warm-up timers (kept here so that Python keeps them alive)
#: hash of (padded bitmap, ratio, vispy) -> distance field; those used this session
_FIELDS: dict[str, np.ndarray] = {}
_USED: set[str] = set()
_STATE = {"loaded": False, "dirty": False}


def cache_path():
    """Where the distance fields are kept between sessions."""
    from histoview.viewer._sample_data import _cache_dir

    return _cache_dir() / CACHE_NAME


def _load_fields() -> None:
    """The fields kept by earlier sessions, once per process (none when the file is absent
    or unreadable: they are computed again and the file rewritten)."""
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    try:
        with np.load(cache_path(), allow_pickle=False) as kept:
            for key in kept.files:
                _FIELDS.setdefault(key, kept[key])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass


def save_fields() -> None:
    """Write the fields to the user cache if new ones were computed: whole (a temporary file
    replaced in one step) or not at all; at most :data:`CACHE_LIMIT` (this session's first)."""
    if not _STATE["dirty"]:
        return
    keep = dict(_FIELDS)
    if len(keep) > CACHE_LIMIT:
        keep = {k: v for k, v in keep.items() if k in _USED}
    path = cache_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **keep)
        os.replace(tmp, path)
        _STATE["dirty"] = False
    except OSError:  # a read-only cache: the next session computes them again
        tmp.unlink(missing_ok=True)


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


def _cpu_rendered(font) -> bool:
    """Whether ``font`` computes its fields with vispy's CPU renderer (the one this module
    reproduces; another renderer makes its own glyphs)."""
    return type(getattr(font, "_renderer", None)).__name__ == "SDFRendererCPU"


def _make(font, char: str) -> None:
    """Add ``char``'s glyph to ``font`` as napari's ``_load_char`` does (its record and
    kerning by napari's ``_load_glyph_qt``, the field by vispy's renderer), the field taken
    from those kept when the painted bitmap is the same."""
    from napari._vispy.utils.qt_font import _load_glyph_qt

    glyphs = dict(font._glyphs)  # the font gets the new record once its field is in the atlas
    _load_glyph_qt(font._qfont, font._metrics, char, glyphs)
    glyph = glyphs[char]
    bitmap = glyph["bitmap"]
    s = font._spread
    data = np.zeros((bitmap.shape[0] + 2 * s, bitmap.shape[1] + 2 * s), np.uint8)
    data[s:-s, s:-s] = bitmap
    h, w = data.shape[0] // font.ratio, data.shape[1] // font.ratio
    key = _field_key(data, font.ratio)
    field = _FIELDS.get(key)
    if field is None or field.shape != (h, w, 3):
        field = np.zeros((h, w, 3), np.uint8)
        font._renderer.render_to_texture(data, field, (0, 0), (w, h))
        _FIELDS[key] = field
        _STATE["dirty"] = True
    _USED.add(key)
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
    font._glyphs[char] = glyph  # (the others' kerning against it is in their records)


def _field_key(data: np.ndarray, ratio: int) -> str:
    import vispy

    digest = hashlib.sha1(data.tobytes())
    digest.update(repr((data.shape, ratio, vispy.__version__)).encode())
    return "f" + digest.hexdigest()


def warm(per_turn: int = PER_TURN) -> int:
    """Start making the glyphs of every napari canvas not yet warmed, ``per_turn``
    characters per event-loop turn (a zero-interval Qt timer); returns how many canvases
    are being warmed. Idempotent: a canvas is warmed once; warming stops when it closes."""
    from qtpy.QtCore import QTimer

    fonts = _fonts()
    if fonts:
        _load_fields()
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
                    char = todo.pop(0)
                    if char in font._glyphs:  # drawn meanwhile: napari made it
                        continue
                    if _cpu_rendered(font):
                        _make(font, char)
                    else:
                        font[char]  # napari's font makes and keeps the glyph
            except Exception:  # e.g. the glyph atlas is full: napari makes the rest itself
                todo.clear()
            finally:
                if not todo:
                    timer.stop()
                    _TIMERS.discard(timer)
                    save_fields()

        timer.timeout.connect(step)
        timer.start()
    return len(fonts)
