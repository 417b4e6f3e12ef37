"""Zooming does not repaint napari's layer list; what a row shows still updates
(viewer._napari_rows)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from histoview.viewer import _napari_rows  # noqa: E402

pytestmark = pytest.mark.gui


def _source_model(viewer):
    model = viewer.window._qt_viewer.layers.model()
    return model.sourceModel() if hasattr(model, "sourceModel") else model


def test_zoom_steps_change_no_row_but_visibility_and_names_do(make_napari_viewer, qtbot):
    from napari._qt.containers.qt_layer_model import QtLayerListModel
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)  # napari updates layers as the canvas draws
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((64, 64)), name="tissue")
    for i in range(4):
        viewer.add_image(rng.random((16, 16)), name=f"map {i}", opacity=0.5)
    viewer.add_points(rng.random((30, 2)) * 64, name="nuclei")
    model = _source_model(viewer)
    assert isinstance(model, QtLayerListModel)
    changed: list[tuple[int, list]] = []
    model.dataChanged.connect(lambda first, last, roles: changed.append((first.row(), roles)))

    draws = [0]
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    scene.events.draw.connect(lambda _event: draws.__setitem__(0, draws[0] + 1))

    def zoom_steps():
        for i in range(6):
            before = draws[0]
            viewer.camera.zoom *= 1.25 if i % 2 == 0 else 1 / 1.1
            # drawn: napari updates the layers as it draws
            qtbot.waitUntil(lambda before=before: draws[0] > before, timeout=10_000)

    zoom_steps()  # settle the first draws
    _napari_rows.uninstall()
    try:
        changed.clear()
        zoom_steps()
        # napari's own handler: a row change per layer per zoom step (what the patch is for)
        assert len(changed) >= len(viewer.layers)
    finally:
        assert _napari_rows.install()
    changed.clear()
    draws[0] = 0
    zoom_steps()
    assert draws[0] >= 6
    assert changed == []

    layer = viewer.layers["map 2"]
    row = list(viewer.layers).index(layer)
    layer.visible = False
    assert (row, [Qt.ItemDataRole.CheckStateRole]) in changed
    assert model.index(row, 0).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    changed.clear()
    layer.name = "map two"
    assert (row, [Qt.ItemDataRole.DisplayRole]) in changed
    assert model.index(row, 0).data(Qt.ItemDataRole.DisplayRole) == "map two"


@pytest.mark.parametrize("dock", ["Grad-CAM", "Compare methods", "Whole slide"])
def test_opening_a_dock_from_the_menu_installs_it(make_napari_viewer, dock):
    from napari._qt.containers.qt_layer_model import QtLayerListModel

    viewer = make_napari_viewer()
    _napari_rows.uninstall()
    try:
        viewer.window.add_plugin_dock_widget("histoview", dock)
        assert QtLayerListModel._process_event is _napari_rows._process_event
    finally:
        _napari_rows.install()
