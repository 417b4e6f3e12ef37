"""A hidden layer goes into the viewer without a redraw of the canvas, and draws once shown
(viewer._layer_updates.insert_inactive, as the compare view inserts its panel layers)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from histoview.viewer._layer_updates import insert_inactive, no_redraw  # noqa: E402

pytestmark = pytest.mark.gui


def _settle(qtbot, viewer):
    qtbot.wait(50)
    viewer.screenshot(canvas_only=True, flash=False)  # any pending draw done
    qtbot.wait(50)


def test_a_hidden_layer_inserts_without_a_redraw_and_draws_once_shown(make_napari_viewer, qtbot):
    from napari.layers import Image

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64), dtype=np.float32), name="tissue", colormap="gray")
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    draws = [0]
    scene.events.draw.connect(lambda _e: draws.__setitem__(0, draws[0] + 1))
    _settle(qtbot, viewer)

    # napari's own insertion of a hidden layer redraws the scene (what insert_inactive saves)
    draws[0] = 0
    viewer.add_image(np.zeros((8, 8), dtype=np.float32), name="plain", visible=False)
    qtbot.waitUntil(lambda: draws[0] > 0, timeout=5_000)

    _settle(qtbot, viewer)
    draws[0] = 0
    white = Image(np.ones((64, 64), dtype=np.float32), name="panel", visible=False)
    white.colormap, white.contrast_limits = "gray", (0.0, 1.0)
    insert_inactive(viewer, len(viewer.layers), white)
    qtbot.wait(300)
    assert draws[0] == 0
    assert viewer.layers.selection.active is not white  # not made the active layer
    assert viewer.layers[-1] is white

    white.visible = True
    qtbot.waitUntil(lambda: draws[0] > 0, timeout=5_000)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[shot.shape[0] // 2, shot.shape[1] // 2, :3].min() > 240  # drawn, white

    # a layer shown while it goes in is drawn as usual
    draws[0] = 0
    shown = Image(np.zeros((4, 4), dtype=np.float32), name="shown", visible=True)
    insert_inactive(viewer, len(viewer.layers), shown)
    qtbot.waitUntil(lambda: draws[0] > 0, timeout=5_000)


def test_a_pending_redraw_stays_pending(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(np.zeros((16, 16), dtype=np.float32))
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    _settle(qtbot, viewer)
    draws = [0]
    scene.events.draw.connect(lambda _e: draws.__setitem__(0, draws[0] + 1))
    layer.opacity = 0.5  # asks for a redraw
    with no_redraw(viewer):
        pass
    qtbot.waitUntil(lambda: draws[0] > 0, timeout=5_000)
