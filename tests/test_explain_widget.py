"""The explanation dock widget in a real napari viewer: worker thread, aligned overlays."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.models.library import list_checkpoints

pytestmark = pytest.mark.gui


def _bundled(method_kind):
    if not list_checkpoints(kind=method_kind):
        pytest.skip("no bundled demo weights for this kind")


def _wait_for_result(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_amil_widget_runs_off_thread_and_aligns_grid(make_napari_viewer, qtbot):
    _bundled("bag")
    from histoview.viewer._explain_widget import ExplainWidget
    from histoview.viewer._sample_data import phantom_layers

    viewer = make_napari_viewer()
    data, kwargs, _ = phantom_layers("invasive", seed=3)[0]
    kwargs["translate"] = (10.0, 20.0)  # an offset image must still line up
    image = viewer.add_image(data, **kwargs)
    widget = ExplainWidget(viewer, "amil")
    assert widget.model_choice.value is not None
    widget.image_choice.value = image
    widget.run()
    # run() returns at once; the explanation arrives later from the worker
    assert widget._worker is not None and widget.last_explanation is None
    _wait_for_result(qtbot, widget)
    expl = widget.last_explanation
    assert expl is not None and expl.method == "amil"
    [grid_layer] = widget.last_layers
    assert grid_layer.data.shape == (16, 25)
    s = np.asarray(image.scale)
    np.testing.assert_allclose(grid_layer.scale, s * 28)
    # patch (0, 0) covers image pixels 0..27: its centre in world coordinates
    np.testing.assert_allclose(grid_layer.translate, np.asarray(image.translate) + s * 13.5)
    # the world position of image pixel (r, c) maps into the grid cell of the patch containing it
    r, c = 100, 300
    world = np.asarray(image.translate) + s * np.array([r, c])
    cell = np.round(grid_layer.world_to_data(world)).astype(int)
    assert tuple(cell) == (r // 28, c // 28)
    assert grid_layer.data[tuple(cell)] == pytest.approx(
        expl.geometry.to_grid(expl.values, fill=0)[r // 28, c // 28]
    )
    assert "A-MIL attention" in grid_layer.name and "synthetic" in grid_layer.name
    from histoview.viewer.overlays import viewer_text_overlay

    assert "research use only" in viewer_text_overlay(viewer).text.lower()
    assert expl.predicted_label in widget.result.value


def test_widget_from_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    assert widget.method_choice.value == "amil"


def test_error_is_reported_not_raised(make_napari_viewer):
    from histoview.viewer._explain_widget import ExplainWidget

    viewer = make_napari_viewer()
    widget = ExplainWidget(viewer, "amil")
    widget.run()  # no image layer
    assert "select an image layer" in widget.result.value
