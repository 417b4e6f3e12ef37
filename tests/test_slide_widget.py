"""The whole-slide dock the way a user meets it: opened from the Plugins menu with nothing
preset, a slide opened through histoview's reader, Explain slide pressed with the defaults.
The tissue mask, the tiles done and the map appear on the slide, in place; Cancel stops and a
second press resumes; the outputs land in the chosen folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _slides import write_slide

pytest.importorskip("napari")


@pytest.fixture
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide") / "slide.tif")


def _open_dock(make_napari_viewer, path, tmp_path):
    from histoview.viewer._reader import read_images

    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("histoview", "Whole slide")
    for data, kwargs, _ in read_images(str(path)):
        viewer.add_image(data, **kwargs)
    dock.out_dir.value = str(tmp_path / "out")
    dock.workers.value = 0  # keep the test light on a 2-core machine
    return viewer, dock


def _wait(qtbot, dock, timeout=240_000):
    qtbot.waitUntil(lambda: not dock.busy, timeout=timeout)


def test_menu_dock_explains_a_slide_with_the_defaults(make_napari_viewer, qtbot, slide, tmp_path):
    viewer, dock = _open_dock(make_napari_viewer, slide, tmp_path)
    assert dock.slide_choice.value is not None, "the slide layer is offered at once"
    assert dock.method_choice.value == "amil"
    assert dock.method_choice.native.currentText() == "A-MIL attention"  # not the id
    assert dock.model_choice.value is not None, "demo weights are there with nothing preset"
    dock.run()
    _wait(qtbot, dock)
    assert dock.status.value and not dock.status.value.startswith("error"), dock.status.value
    result = dock.last_result
    assert result is not None and not result.cancelled
    out = tmp_path / "out"
    assert (out / "slide.amil.ome.tif").exists()
    summary = json.loads((out / "slide.amil.json").read_text())
    assert summary["tiles_done"] == summary["tiles_total"] > 0
    assert not (out / "slide.amil.zarr").exists(), "the working store is removed when done"
    names = [lay.name for lay in viewer.layers]
    assert "slide.tif · tissue" in names and "slide.tif · A-MIL attention" in names, names
    slide_layer = viewer.layers["slide.tif"]
    overlay = viewer.layers["slide.tif · A-MIL attention"]
    # the overlay covers the slide's extent in world coordinates (placed in um, in place)
    s0, o0 = slide_layer.extent.world, overlay.extent.world
    np.testing.assert_allclose(o0[0], s0[0], atol=overlay.scale[0])
    assert np.all(o0[1] <= s0[1] + overlay.scale[0])
    assert np.isfinite(np.asarray(overlay.data)).any()
    # the overlay is not offered as a slide to explain, the slide still is
    dock.slide_choice.reset_choices()
    assert [c for c in dock.slide_choice.choices] == [slide_layer]
    assert dock.first_tiles_s is not None
    from histoview import RESEARCH_NOTICE
    from histoview.viewer._notice import viewer_text_overlay

    notice = " ".join(viewer_text_overlay(viewer).text.split())  # a screenshot carries both
    assert "A-MIL attention [synthetic demo weights]" in notice and RESEARCH_NOTICE in notice
    viewer.layers.remove(slide_layer)  # its result is not left standing for the next slide
    assert dock.status.value == "" and dock.progress.value == 0


def test_cancel_keeps_the_tiles_and_a_second_press_resumes(
    make_napari_viewer, qtbot, slide, tmp_path
):
    viewer, dock = _open_dock(make_napari_viewer, slide, tmp_path)
    dock.batch_size.value = 1
    dock.run()
    qtbot.waitUntil(lambda: dock.progress.value >= 1 or not dock.busy, timeout=240_000)
    dock.cancel()
    _wait(qtbot, dock)
    first = dock.last_result
    if first is not None and not first.cancelled:
        pytest.skip("the run finished before the cancel arrived (a fast machine)")
    assert "cancelled" in dock.status.value and "resume" in dock.status.value
    assert "covers only the tiles done" in dock.status.value
    tiles = viewer.layers["slide.tif · tiles done (A-MIL attention)"]
    assert tiles.visible, "after a cancel, the tiles done show which part the map covers"
    assert (tmp_path / "out" / "slide.amil.zarr").exists(), "tiles done are kept"
    assert not (tmp_path / "out" / "slide.amil.ome.tif").exists(), "no half output"
    dock.run()
    _wait(qtbot, dock)
    second = dock.last_result
    assert second is not None and not second.cancelled, dock.status.value
    assert (
        second.summary["resumed"]
        and second.summary["tiles_this_run"] < second.summary["tiles_total"]
    )
    assert not tiles.visible  # the map is whole again


def test_the_status_says_how_the_slide_pixel_size_was_found_when_the_file_did_not():
    from types import SimpleNamespace

    from histoview.viewer._slide_running import result_text

    def result(source, describe):
        summary = {"slide_pixel_size_source": source, "slide_pixel_size": describe}
        return SimpleNamespace(summary=summary, cancelled=False, outputs={})

    note = "TIFF resolution tags: 72 pixels per inch (352.8 um/px) ... ignored"
    estimated = "0.2318 um/px (estimated from the nuclei's size, +-12%, 106 nuclei)"
    text = result_text(result("estimated", estimated), note)
    assert f"slide pixel size: {estimated}" in text and note in text
    calibrated = result_text(result("file", "0.25 um/px (from the file's calibration)"))
    assert "pixel size" not in calibrated  # the file said it: nothing to warn about


def test_a_region_run_keeps_the_whole_slides_map_and_its_cancelled_tiles(
    make_napari_viewer, qtbot, slide, tmp_path
):
    """A cancelled whole-slide run, then a region: the region gets its own layers and files,
    the whole slide's tiles done stay for the resume, and only one map shows at a time."""
    viewer, dock = _open_dock(make_napari_viewer, slide, tmp_path)
    out = tmp_path / "out"
    dock.batch_size.value = 1
    dock.run()
    qtbot.waitUntil(lambda: dock.progress.value >= 1 or not dock.busy, timeout=240_000)
    dock.cancel()
    _wait(qtbot, dock)
    if not dock.last_result.cancelled:
        pytest.skip("the run finished before the cancel arrived (a fast machine)")
    whole = viewer.layers["slide.tif · A-MIL attention"]
    layer = viewer.layers["slide.tif"]
    corners = np.array([[-0.5, 447.5], [447.5, 895.5]]) * layer.scale[0]
    viewer.add_shapes([corners], shape_type="rectangle", name="region")
    dock.scope.value = "drawn rectangle"
    dock.run()
    _wait(qtbot, dock)
    assert not dock.last_result.cancelled, dock.status.value
    assert (out / "slide.amil.zarr").exists(), "the whole slide's tiles done are kept"
    assert (out / "slide.region-x448-y0-448x448.amil.ome.tif").exists()
    region = viewer.layers["slide.tif · A-MIL attention · region x448 y0 448x448 px"]
    assert region is not whole and region.visible and not whole.visible
    assert whole.data.shape != region.data.shape  # the whole slide's map was not replaced
    dock.scope.value = "whole slide"
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_result.summary["resumed"], dock.status.value
    assert whole.visible and not region.visible


def test_region_from_a_drawn_rectangle(make_napari_viewer, qtbot, slide, tmp_path):
    viewer, dock = _open_dock(make_napari_viewer, slide, tmp_path)
    dock.scope.value = "drawn rectangle"
    with pytest.raises(ValueError, match="draw a rectangle"):
        dock.region()
    layer = viewer.layers["slide.tif"]
    s = layer.scale[0]
    # a rectangle over level-0 rows 0..448, cols 448..896, drawn in world coordinates (um)
    corners = np.array([[-0.5, 447.5], [447.5, 895.5]]) * s
    viewer.add_shapes([corners], shape_type="rectangle", name="region")
    assert dock.region() == (0.0, 448.0, 448.0, 448.0)
    dock.scope.value = "current view"
    region = dock.region()
    assert region is not None and region[2] > 0


def test_a_graph_run_ends_with_the_nuclei_in_view_over_the_slide(
    make_napari_viewer, qtbot, slide, tmp_path
):
    """The nuclei file of a graph run is read in a worker and shown as points over the slide
    (the nuclei in view); a rerun replaces them, deleting them lets them go."""
    from histoview.preprocessing.slide_nuclei import load_slide_nuclei
    from histoview.viewer._nuclei_layers import view_box
    from histoview.viewer._slide_live import world_box_to_region

    viewer, dock = _open_dock(make_napari_viewer, slide, tmp_path)
    dock.method_choice.value = "graph"
    assert dock.model_choice.value is not None, "graph demo weights with nothing preset"
    dock.run()
    _wait(qtbot, dock)
    assert not dock.status.value.startswith("error"), dock.status.value
    files = dock.last_result.summary["nuclei_files"]
    nuclei = load_slide_nuclei(tmp_path / "out" / files["nuclei"])
    slide_layer = viewer.layers["slide.tif"]
    points = viewer.layers["slide.tif · nuclei"]
    assert type(points).__name__ == "Points" and "slide.tif · nuclei: graph edges" in viewer.layers
    np.testing.assert_allclose(points.scale, slide_layer.scale)
    r, c, h, w = world_box_to_region(
        view_box(viewer), slide_layer.scale, slide_layer.translate, nuclei.level0_shape
    )
    cents = nuclei.centroids
    in_view = (
        (cents[:, 0] >= r) & (cents[:, 0] < r + h) & (cents[:, 1] >= c) & (cents[:, 1] < c + w)
    )
    assert len(points.data) == in_view.sum() > 0, "every nucleus in view (few here)"
    np.testing.assert_allclose(np.sort(points.data, 0), np.sort(cents[in_view], 0))
    assert "importance percentile" in points.features
    if os.environ.get("HISTOVIEW_SHOTS"):  # a folder: a screenshot of the result lands there
        viewer.window.resize(1900, 1100)
        camera = getattr(viewer, "scene", viewer).camera
        y, x = slide_layer.data_to_world((686, 1040))  # the invasive phantom, zoomed in
        camera.center, camera.zoom = (y, x), 2.5
        qtbot.wait(800)  # the camera's debounced update
        shot = os.path.join(os.environ["HISTOVIEW_SHOTS"], "slide_nuclei.png")
        viewer.screenshot(path=shot, canvas_only=False)
    # deleting the edges keeps the points (still following the camera), with no edges made
    viewer.layers.remove(viewer.layers["slide.tif · nuclei: graph edges"])
    [shown] = dock._nuclei.shown.values()
    assert shown.update().segments is None and "slide.tif · nuclei" in viewer.layers
    # a rerun's nuclei replace these (the finished run handled again: its nuclei loaded anew)
    dock._on_done((dock.last_result, None))
    _wait(qtbot, dock)
    nuclei_layers = [lay for lay in viewer.layers if lay.name.startswith("slide.tif · nuclei")]
    assert len(nuclei_layers) == 2 and points not in viewer.layers, [
        lay.name for lay in viewer.layers
    ]
    # deleting the points removes the edges too and stops following the camera
    [shown] = dock._nuclei.shown.values()
    viewer.layers.remove(viewer.layers["slide.tif · nuclei"])
    assert not [lay for lay in viewer.layers if lay.name.startswith("slide.tif · nuclei")]
    assert not dock._nuclei.shown
    camera = getattr(viewer, "scene", viewer).camera
    camera.zoom = camera.zoom * 2
    assert not shown._timer.isActive(), "the camera is no longer followed"
    qtbot.wait(300)  # no update of the removed layers (nothing raises)
