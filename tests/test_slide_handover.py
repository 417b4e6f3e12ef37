"""Explain pressed in an explain dock on a whole slide, the way a user meets it: the dock opened
from the Plugins menu with nothing preset, a small pyramidal slide opened through histoview's
reader. The slide goes to the Whole slide dock (explained tile by tile at the model's
magnification, never a coarse pyramid level), which opens and runs with the same method and
model; a plain image is still explained in one piece in the explain dock."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _slides import write_slide

pytestmark = pytest.mark.gui

SHOT = os.environ.get("HISTOVIEW_SHOTS")  # a folder: screenshots of the result land there


@pytest.fixture
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide") / "slide.tif")


def shoot(viewer, qtbot, name):
    """A screenshot of the whole window (canvas and docks) into $HISTOVIEW_SHOTS/name."""
    if SHOT:
        viewer.window.resize(1900, 1100)  # the docks beside a canvas that shows something
        viewer.reset_view()
        qtbot.wait(500)
        viewer.screenshot(path=os.path.join(SHOT, name), canvas_only=False)


def _open(viewer, path):
    [layer] = viewer.open(path, plugin="histoview")
    return layer


def _slide_dock(viewer, tmp_path):
    """The Whole slide dock as napari holds it (the explain dock opens the same one)."""
    _, dock = viewer.window.add_plugin_dock_widget("histoview", "Whole slide")
    dock.out_dir.value = str(tmp_path / "out")
    dock.workers.value = 0  # keep the test light on a 2-core machine
    return dock


def test_explain_on_a_slide_runs_the_whole_slide_dock(make_napari_viewer, qtbot, slide, tmp_path):
    viewer = make_napari_viewer()
    layer = _open(viewer, slide)
    assert layer.multiscale
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # as from the menu
    dock = _slide_dock(viewer, tmp_path)  # only to keep its outputs in tmp_path
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    model = widget.model_choice.value
    widget.run()
    assert "tile by tile" in widget.result.value and "Whole slide dock" in widget.result.value
    assert "whole slide" in widget.result.value, widget.result.value  # the view shows it all
    assert dock.busy, "the Whole slide dock is running"
    assert dock.method_choice.value == "amil" and dock.scope.value == "whole slide"
    assert dock.model_choice.value.path == model.path, "the same model"
    qtbot.waitUntil(lambda: not dock.busy, timeout=240_000)
    assert not dock.status.value.startswith("error"), dock.status.value
    assert dock.last_result is not None and not dock.last_result.cancelled
    overlay = viewer.layers["slide.tif · A-MIL attention"]
    assert np.isfinite(np.asarray(overlay.data)).any()
    assert not [lay for lay in viewer.layers if "histoview_explanation" in lay.metadata], (
        "no coarse one-piece explanation"
    )
    assert widget.result.value.startswith("Whole slide dock: slide prediction"), (
        "the explain dock says how the run it handed over ended"
    )
    assert (tmp_path / "out" / "slide.amil.ome.tif").exists()
    shoot(viewer, qtbot, "slide_handover.png")


def test_zoomed_in_explains_the_view_and_all_methods_says_one_at_a_time(
    make_napari_viewer, qtbot, slide, tmp_path
):
    from histoview.viewer._slide_handover import choose_scope

    viewer = make_napari_viewer()
    layer = _open(viewer, slide)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Explain (all methods)")
    dock = _slide_dock(viewer, tmp_path)
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    assert choose_scope(viewer, layer) == "whole slide"
    camera = getattr(viewer, "scene", viewer).camera
    camera.zoom = camera.zoom * 4  # a quarter of the slide's width in view
    assert choose_scope(viewer, layer) == "current view"
    widget.method_choice.value = "gradcam"
    classes = [c for c in widget.class_choice.choices if c != "predicted"]
    widget.class_choice.value = classes[0]  # a class the pathologist asks about
    widget.run()
    text = widget.result.value
    assert "current view" in text and "one method at a time" in text, text
    assert dock.method_choice.value == "gradcam" and dock.scope.value == "current view"
    qtbot.waitUntil(lambda: not dock.busy, timeout=240_000)
    assert not dock.status.value.startswith("error"), dock.status.value
    region = dock.last_result.summary.get("region")
    assert region is not None, "only the view was explained"
    assert dock.last_result.summary["target_class"] == 0, "the explain dock's class"
    assert any(
        n.startswith("slide.tif · Grad-CAM · region x") for n in [lay.name for lay in viewer.layers]
    )


def test_a_drawn_rectangle_is_what_gets_explained(make_napari_viewer, qtbot, slide, tmp_path):
    """A rectangle drawn over the slide (its Shapes layer selected) is the region asked
    about: only it is explained, also when the view shows the whole slide."""
    from histoview.viewer._slide_handover import choose_scope

    viewer = make_napari_viewer()
    layer = _open(viewer, slide)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    dock = _slide_dock(viewer, tmp_path)
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    h, w = (float(v) for v in layer.extent.world[1][-2:])  # world size of the slide
    box = np.array([[0, 0], [0, w / 2], [h / 2, w / 2], [h / 2, 0]])
    viewer.add_shapes([box], shape_type="rectangle", name="ask here")
    assert choose_scope(viewer, layer) == "drawn rectangle"
    widget.run()
    assert "drawn rectangle" in widget.result.value, widget.result.value
    assert dock.scope.value == "drawn rectangle"
    qtbot.waitUntil(lambda: not dock.busy, timeout=240_000)
    assert not dock.status.value.startswith("error"), dock.status.value
    done = dock.last_result.summary["region"]["level0_pixels"]
    shape0 = layer.level_shapes[0]
    assert (done["y"], done["x"]) == (0, 0), done
    assert abs(done["height"] - shape0[0] / 2) <= 2 and abs(done["width"] - shape0[1] / 2) <= 2
    viewer.layers.selection.active = layer  # the slide selected again: not the drawing
    assert choose_scope(viewer, layer) == "whole slide"


def test_a_plain_image_is_still_explained_in_the_explain_dock(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom
    from histoview.viewer._slide_handover import wants_slide_dock

    viewer = make_napari_viewer()
    path = tmp_path / "tissue.png"
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=5).image).save(path)
    image = _open(viewer, path)
    assert not image.multiscale and not wants_slide_dock(image, "amil")
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not widget.result.value.startswith("error"), widget.result.value
    assert "Whole slide" not in widget.result.value
    assert widget.last_explanation is not None and widget.last_layers
    names = [name for name, _ in viewer.window.dock_widgets.items()]
    assert not any("Whole slide" in name for name in names), names


def test_a_single_image_too_big_at_the_model_pixel_size_goes_to_the_slide_dock():
    """A file-backed image shown in one piece still goes to the Whole slide dock when it has
    more pixels at the model's pixel size than one read allows (MAX_LEVEL_PIXELS)."""
    from types import SimpleNamespace

    from histoview.explain.run import MAX_LEVEL_PIXELS
    from histoview.viewer._slide_handover import wants_slide_dock

    side = int(MAX_LEVEL_PIXELS**0.5) + 100  # just over the limit at 0.25 um/px
    layer = SimpleNamespace(
        multiscale=False,
        data=np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3)),  # no memory
        metadata={"histoview": {"path": "big.tif", "pixel_size_um": 0.25}},
    )
    at = lambda um: SimpleNamespace(meta={"pixel_size_um": um})  # noqa: E731
    assert wants_slide_dock(layer, "gradcam", at(0.25))
    assert not wants_slide_dock(layer, "gradcam", at(0.5)), "a quarter of the pixels fits"
    assert not wants_slide_dock(layer, "no such method", at(0.25))
    layer.metadata["histoview"].pop("path")
    assert not wants_slide_dock(layer, "gradcam", at(0.25)), "no file: nothing to tile"


def test_nuclei_graph_dock_on_a_slide_ends_with_its_nuclei(
    make_napari_viewer, qtbot, slide, tmp_path
):
    """The Nuclei graph dock's importance setting goes with the slide; the run ends with the
    slide's nuclei over it."""
    viewer = make_napari_viewer()
    _open(viewer, slide)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Nuclei graph")
    dock = _slide_dock(viewer, tmp_path)
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    widget.importance_choice.value = "occlusion"
    widget.run()
    assert "Whole slide dock" in widget.result.value, widget.result.value
    qtbot.waitUntil(lambda: not dock.busy, timeout=240_000)
    assert not dock.status.value.startswith("error"), dock.status.value
    assert dock.last_result.summary["importance"] == "occlusion"
    points = viewer.layers["slide.tif · nuclei"]
    assert len(points.data) > 0


def test_compare_run_all_on_a_slide_says_where_slides_go(make_napari_viewer, slide):
    """Run all methods would read a coarse pyramid level: it says so and computes nothing."""
    viewer = make_napari_viewer()
    layer = _open(viewer, slide)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Compare methods")
    widget.image_choice.value = layer
    n_layers = len(viewer.layers)
    widget.run_all()
    assert widget._worker is None and len(viewer.layers) == n_layers
    text = widget.status.text()
    assert "is a whole slide" in text and "Whole slide" in text, text
