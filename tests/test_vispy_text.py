"""Canvas text sends its glyph filter kernel to OpenGL once per font, and draws the same
pixels as vispy's own (viewer._vispy_text)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vispy")

from histoview.viewer import _vispy_text  # noqa: E402


def _kernel_uploads(monkeypatch) -> list:
    """A list that records each upload of a kernel-shaped (16 x 1024 x 4) texture."""
    from vispy.gloo import texture

    seen = []
    original = texture.Texture2D.set_data

    def set_data(self, data, offset=None, copy=False):
        if getattr(data, "shape", None) == (16, 1024, 4):
            seen.append(self)
        return original(self, data, offset=offset, copy=copy)

    monkeypatch.setattr(texture.Texture2D, "set_data", set_data)
    return seen


def test_text_draws_upload_the_kernel_once_and_look_the_same(
    make_napari_viewer, qtbot, monkeypatch
):
    was_installed = bool(_vispy_text._PATCHES)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.linspace(0, 1, 64 * 64).reshape(64, 64), name="tissue")
    canvas = getattr(viewer, "canvas", None)
    text = canvas.overlays["text"] if canvas is not None else viewer.text_overlay
    text.visible = True
    text.text = "A-MIL attention: malignant 0.93 - 50 µm"
    text.font_size = 14
    uploads = _kernel_uploads(monkeypatch)

    viewer.reset_view()
    camera = getattr(viewer, "scene", viewer).camera
    zoom = camera.zoom

    def draws(n=3):
        shots = []
        for i in range(n):  # the same three views each time, each a new draw
            camera.zoom = zoom * (1.1 if i % 2 else 0.9)
            qtbot.wait(20)
            shots.append(viewer.screenshot(canvas_only=True, flash=False))
        return shots

    _vispy_text.uninstall()
    try:
        draws(1)  # the text's first draw
        uploads.clear()
        own = draws()
        assert len(uploads) >= 3  # vispy: the kernel again on every draw

        assert _vispy_text.install()
        uploads.clear()
        draws(1)  # the font's kernel becomes a texture: one upload per font
        assert len(uploads) <= 2
        uploads.clear()
        mine = draws()
        assert uploads == []  # later draws only bind it
        for a, b in zip(mine, own, strict=True):
            assert a.shape == b.shape
            assert np.array_equal(a, b)
    finally:
        if was_installed:
            _vispy_text.install()
        else:
            _vispy_text.uninstall()


def test_a_font_keeps_a_texture_of_the_same_kernel():
    from vispy.gloo import Texture2D
    from vispy.io import load_spatial_filters

    class Font:
        _kernel = load_spatial_filters()[0]

    font = Font()
    _vispy_text.kernel_texture(font)
    texture = font._kernel
    assert isinstance(texture, Texture2D)
    assert texture.shape == (16, 1024, 4)
    assert texture.interpolation == "nearest" and texture.wrapping == "clamp_to_edge"
    _vispy_text.kernel_texture(font)
    assert font._kernel is texture  # once per font
