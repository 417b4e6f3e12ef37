"""napari's layer controls and spare visuals are built when first needed; what a user sees
does not change (viewer._napari_lazy)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from histoview.viewer import _napari_lazy  # noqa: E402

pytestmark = pytest.mark.gui


def _controls(viewer):
    return viewer.window._qt_viewer.controls


def _add_unselected(viewer, data, **kwargs):
    """Insert a layer without selecting it, as histoview inserts its overlays."""
    layers = viewer.layers
    layers._activate_on_insert = False
    try:
        return viewer.add_image(data, **kwargs)
    finally:
        layers._activate_on_insert = True


def test_controls_are_built_when_a_layer_is_first_selected(make_napari_viewer, qtbot):
    assert _napari_lazy.install()
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    tissue = viewer.add_image(rng.random((64, 64)), name="tissue")  # selected: built
    container = _controls(viewer)
    assert container.currentWidget() is container.widgets[tissue]
    maps = [_add_unselected(viewer, rng.random((16, 16)), name=f"map {i}") for i in range(3)]
    assert tissue in container.widgets
    assert not any(layer in container.widgets for layer in maps)

    # the user selects an overlay: its controls show, for that layer, and follow it
    viewer.layers.selection.active = maps[1]
    shown = container.currentWidget()
    assert shown is container.widgets[maps[1]]
    assert shown.layer is maps[1]
    maps[1].opacity = 0.25
    assert shown._opacity_blending_controls.opacity_slider.value() == pytest.approx(0.25)
    assert maps[0] not in container.widgets

    # removing a layer whose controls were never built, then one whose were
    viewer.layers.remove(maps[0])
    assert maps[0] not in container.widgets
    stack_before = container.count()
    viewer.layers.remove(maps[1])
    assert maps[1] not in container.widgets
    assert container.count() == stack_before - 1
    assert container.currentWidget() is not shown

    # napari's own: every inserted layer builds its controls (what the patch saves)
    _napari_lazy.uninstall()
    try:
        eager = _add_unselected(viewer, rng.random((16, 16)), name="eager")
        assert eager in container.widgets
    finally:
        assert _napari_lazy.install()


def test_a_2d_image_builds_only_its_image_node(make_napari_viewer, qtbot):
    from napari._vispy.layers.image import ImageLayerNode

    assert _napari_lazy.install()
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(np.random.default_rng(1).random((32, 48)), name="map")
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[layer]
    node = visual._layer_node
    assert isinstance(node, ImageLayerNode)
    assert "_volume_node" not in vars(node)
    assert "_tiledimage_node" not in vars(node)
    assert visual.node is node._image_node

    # napari's own builds all three (what the patch saves)
    _napari_lazy.uninstall()
    try:
        eager = ImageLayerNode(None, texture_format="auto")
        assert {"_image_node", "_tiledimage_node", "_volume_node"} <= set(vars(eager))
    finally:
        assert _napari_lazy.install()


def test_3d_and_larger_than_one_texture_still_draw(make_napari_viewer, qtbot):
    """A spare node is built the first time napari asks for it, with napari's arguments,
    and draws what napari's own would."""
    assert _napari_lazy.install()
    viewer = make_napari_viewer(show=True)
    volume = np.zeros((8, 32, 32), dtype=np.float32)
    volume[2:6, 8:24, 8:24] = 1.0
    layer = viewer.add_image(volume, name="stack", colormap="gray")
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[layer]
    assert "_volume_node" not in vars(visual._layer_node)
    viewer.dims.ndisplay = 3
    assert visual.node is visual._layer_node._volume_node
    assert visual.node.texture_format == "auto" or visual.node.texture_format is None
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 200  # the cube is drawn, white on black
    viewer.dims.ndisplay = 2
    assert visual.node is visual._layer_node._image_node

    m2d = visual._layer_node.MAX_TEXTURE_SIZE_2D
    wide = np.ones((4, m2d + 16), dtype=np.float32)
    big = viewer.add_image(wide, name="wide", colormap="gray")
    big_visual = viewer.window._qt_viewer.canvas.layer_to_visual[big]
    assert big_visual.node is big_visual._layer_node._tiledimage_node

    with pytest.raises(AttributeError):
        _ = visual._layer_node._no_such_node
