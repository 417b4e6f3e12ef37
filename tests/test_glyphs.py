"""The canvas's text glyphs are made ahead of time when a histoview dock opens, so that the
first title drawn makes none on the main thread (viewer._glyphs)."""

from __future__ import annotations

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
