"""The canvas's text glyphs are made ahead of time when a histoview dock opens, so that the
first title drawn makes none on the main thread (viewer._glyphs)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from histoview.viewer import _glyphs  # noqa: E402

pytestmark = pytest.mark.gui


def _font(viewer):
    info = viewer.window._qt_viewer.canvas._font_info
    return info.font_manager.get_font(info.face, False, False)


def test_a_dock_opened_makes_the_glyphs_and_a_title_then_makes_none(
    make_napari_viewer, qtbot, monkeypatch
):
    from napari._vispy.utils.qt_font import QtTextureFont

    viewer = make_napari_viewer(show=True)
    font = _font(viewer)
    assert len(_glyphs.missing(font)) > 80  # nothing drawn yet
    viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    qtbot.waitUntil(lambda: not _glyphs.missing(font), timeout=30_000)

    made: list[str] = []
    load = QtTextureFont._load_char
    monkeypatch.setattr(
        QtTextureFont, "_load_char", lambda self, char: (made.append(char), load(self, char))
    )
    viewer.text_overlay.visible = True
    title = "Grad-CAM: malignant (> 0.99) [synthetic demo weights] 50 µm"
    viewer.text_overlay.text = title
    viewer.screenshot(canvas_only=True)  # drawn now
    assert made == []
    viewer.text_overlay.text = "日本"  # a character outside the warmed set is still made
    viewer.screenshot(canvas_only=True)
    assert made == ["日", "本"]


def test_a_hidden_canvas_is_not_warmed(make_napari_viewer):
    viewer = make_napari_viewer()  # not shown: it draws no text
    assert _glyphs.warm() == 0
    assert len(_glyphs.missing(_font(viewer))) == len(_glyphs.CHARACTERS)


def test_a_closed_canvas_stops_its_warm_up(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    font = _font(viewer)
    assert _glyphs.warm(per_turn=1) == 1
    qtbot.waitUntil(lambda: len(_glyphs.missing(font)) < len(_glyphs.CHARACTERS), timeout=30_000)
    viewer.window._qt_viewer.canvas._scene_canvas.native.hide()
    qtbot.waitUntil(lambda: not _glyphs._TIMERS, timeout=10_000)
    left = len(_glyphs.missing(font))
    qtbot.wait(100)
    assert left > 0 and len(_glyphs.missing(font)) == left  # stopped: nothing more made


def _fresh_session(monkeypatch):
    """As in a new process: no fields in memory, the cache file not read yet."""
    monkeypatch.setattr(_glyphs, "_FIELDS", {})
    monkeypatch.setattr(_glyphs, "_USED", set())
    monkeypatch.setattr(_glyphs, "_STATE", {"loaded": False, "dirty": False})


def _atlas_pixels(mirrors, font, char):
    """The atlas pixels of ``char``'s glyph in ``font`` (from the atlas's mirror)."""
    glyph = font[char]
    u0, v0, _, _ = glyph["texcoords"]
    w, h = glyph["size"]
    x, y = round(u0 * font._atlas.shape[1]), round(v0 * font._atlas.shape[0])
    return mirrors[id(font._atlas)][y : y + h, x : x + w]


def _mirror_atlases(monkeypatch) -> dict:
    """What is written into each glyph atlas (the GL texture keeps it only on the GPU)."""
    from vispy.gloo import TextureAtlas

    mirrors: dict[int, np.ndarray] = {}
    write = TextureAtlas.__setitem__

    def mirrored(self, key, data):
        mirrors.setdefault(id(self), np.zeros(self.shape, np.uint8))[key] = data
        return write(self, key, data)

    monkeypatch.setattr(TextureAtlas, "__setitem__", mirrored)
    return mirrors


def _fields_computed(monkeypatch) -> list:
    from vispy.visuals.text.text import SDFRendererCPU

    calls: list = []
    render = SDFRendererCPU.render_to_texture
    monkeypatch.setattr(
        SDFRendererCPU,
        "render_to_texture",
        lambda self, *a: calls.append(1) or render(self, *a),
    )
    return calls


def _same_glyphs(mirrors, font, own) -> None:
    for char in "Ag0µ–( ":
        mine, theirs = font[char], own[char]
        for field in ("offset", "advance", "size"):
            assert mine[field] == theirs[field], (char, field)
        assert mine["kerning"] == theirs["kerning"], char
        np.testing.assert_array_equal(
            _atlas_pixels(mirrors, font, char), _atlas_pixels(mirrors, own, char)
        )
    assert _atlas_pixels(mirrors, font, "A").max() > 200  # a real glyph, not an empty region


def test_warmed_glyphs_are_the_ones_napari_makes(make_napari_viewer, qtbot, monkeypatch):
    """Same record, kerning and atlas pixels as napari's own path makes for each character."""
    from napari._vispy.utils.qt_font import QtFontManager

    _fresh_session(monkeypatch)
    mirrors = _mirror_atlases(monkeypatch)
    viewer = make_napari_viewer(show=True)
    font = _font(viewer)
    assert _glyphs.warm() == 1
    qtbot.waitUntil(lambda: not _glyphs.missing(font), timeout=30_000)
    own = QtFontManager().get_font(font._font["face"], False, False)  # napari's own path
    for char in _glyphs.CHARACTERS:
        own[char]
    _same_glyphs(mirrors, font, own)


def test_a_later_session_takes_the_fields_from_the_cache(make_napari_viewer, qtbot, monkeypatch):
    """The first session computes every field and writes them whole; the next one computes
    none and draws the same glyphs; an unreadable file is computed again and rewritten."""
    from napari._vispy.utils.qt_font import QtFontManager

    _fresh_session(monkeypatch)
    viewer = make_napari_viewer(show=True)
    first = _font(viewer)
    _glyphs.warm()
    qtbot.waitUntil(lambda: not _glyphs._TIMERS, timeout=30_000)
    assert _glyphs.cache_path().is_file()
    viewer.close()

    _fresh_session(monkeypatch)
    mirrors = _mirror_atlases(monkeypatch)
    computed = _fields_computed(monkeypatch)
    viewer = make_napari_viewer(show=True)
    font = _font(viewer)
    assert font is not first
    _glyphs.warm()
    qtbot.waitUntil(lambda: not _glyphs._TIMERS, timeout=30_000)
    assert not _glyphs.missing(font) and computed == []  # every field from the file
    own = QtFontManager().get_font(font._font["face"], False, False)
    for char in _glyphs.CHARACTERS:
        own[char]  # napari's own path computes its fields
    _same_glyphs(mirrors, font, own)
    viewer.close()

    _glyphs.cache_path().write_bytes(b"not a zip file")  # e.g. a disk that filled up
    _fresh_session(monkeypatch)
    computed.clear()
    viewer = make_napari_viewer(show=True)
    _glyphs.warm()
    qtbot.waitUntil(lambda: not _glyphs._TIMERS, timeout=30_000)
    assert not _glyphs.missing(_font(viewer)) and len(computed) == len(_glyphs.CHARACTERS)
    with np.load(_glyphs.cache_path()) as kept:  # rewritten, whole
        assert len(kept.files) == len(_glyphs.CHARACTERS)
