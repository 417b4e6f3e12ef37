"""The explanation dock widgets as a user meets them: opened from the Plugins menu with
nothing preset, the main button pressed with the defaults, then again after layers change;
worker thread, aligned overlays, cancel, honest labels."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.models.library import list_checkpoints

pytestmark = pytest.mark.gui

#: the explanation docks of napari.yaml and the method each starts with
DOCKS = {
    "Attention-MIL": "amil",
    "Nuclei graph": "graph",
    "Grad-CAM": "gradcam",
    "Explain (all methods)": "amil",
}


def _bundled(method_kind):
    if not list_checkpoints(kind=method_kind):
        pytest.skip("no bundled demo weights for this kind")


def _wait_for_result(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _explanations(viewer):
    return [lay for lay in viewer.layers if "histoview_explanation" in lay.metadata]


def _open_png(viewer, tmp_path, name="tissue.png", seed=5):
    """A BreakHis-sized image opened through histoview's reader, as File > Open does."""
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    path = tmp_path / name
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=seed).image).save(path)
    [layer] = viewer.open(path, plugin="histoview")
    return layer


@pytest.mark.parametrize("display", list(DOCKS))
def test_each_dock_explains_at_the_first_click_and_after_layers_change(
    display, make_napari_viewer, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    image = _open_png(viewer, tmp_path)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", display)
    assert widget.method_choice.value == DOCKS[display]
    assert widget.model_choice.value is not None, "the model box is empty at first"
    model = widget.model_choice.value
    widget.run()  # the defaults, nothing preset
    _wait_for_result(qtbot, widget)
    assert not widget.result.value.startswith("error"), widget.result.value
    first = _explanations(viewer)
    assert first and widget.last_explanation.method == DOCKS[display]
    # another layer arrives (a second image) and one goes: choices survive, the next click works
    other = _open_png(viewer, tmp_path, "second.png", seed=6)
    viewer.layers.remove(first[0])
    assert widget.model_choice.value == model, "adding a layer changed or emptied the model"
    widget.image_choice.value = other
    widget.run()
    _wait_for_result(qtbot, widget)
    assert not widget.result.value.startswith("error"), widget.result.value
    assert widget.last_explanation.extra is not None
    over = [
        lay
        for lay in _explanations(viewer)
        if lay.metadata["histoview"]["explanation"]["image_layer"] == "second.png"
    ]
    assert over, "no overlay over the second image"
    assert image in viewer.layers


def test_cancel_stops_and_adds_nothing(make_napari_viewer, qtbot, tmp_path):
    _bundled("image")
    viewer = make_napari_viewer()
    _open_png(viewer, tmp_path)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    widget.run()
    widget.cancel()  # stops at the run's next step
    _wait_for_result(qtbot, widget)
    qtbot.wait(200)
    assert widget.result.value == "cancelled"
    assert not _explanations(viewer)
    assert widget.run_button.enabled
    widget.run()  # and the widget still works afterwards
    _wait_for_result(qtbot, widget)
    assert _explanations(viewer)


def test_demo_weights_on_a_real_image_warn_visibly(make_napari_viewer, tmp_path):
    _bundled("bag")
    from histoview.viewer._sample_data import phantom_layers

    viewer = make_napari_viewer()
    _open_png(viewer, tmp_path)  # a file: not a phantom the demo weights know
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    assert widget.model_choice.value.synthetic
    assert not widget.warning.native.isHidden() and "mean nothing" in widget.warning.value
    data, kwargs, _ = phantom_layers("invasive", seed=3)[0]
    widget.image_choice.value = viewer.add_image(data, **kwargs)
    assert widget.warning.native.isHidden()


def test_pixel_size_entered_is_remembered_per_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    first = _open_png(viewer, tmp_path)
    second = _open_png(viewer, tmp_path, "second.png", seed=6)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Nuclei graph")
    widget.image_choice.value = first
    widget.pixel_size.value = 0.25
    assert first.metadata["histoview"]["pixel_size_um"] == 0.25
    assert first.metadata["histoview"]["pixel_size_source"] == "user"
    widget.image_choice.value = second
    assert widget.pixel_size.value == 0.0
    widget.image_choice.value = first
    assert widget.pixel_size.value == pytest.approx(0.25)
    widget.pixel_size.value = 0.0  # forget it: back to what the file said
    assert first.metadata["histoview"]["pixel_size_source"] != "user"


def test_the_chosen_model_stays_when_the_library_changes(make_napari_viewer, tmp_path, monkeypatch):
    _bundled("bag")
    from histoview.models.library import add_to_library, bundled_checkpoint
    from histoview.viewer._explain_widget import refresh_all

    monkeypatch.setenv("HISTOVIEW_DATA_DIR", str(tmp_path / "data"))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    chosen = widget.model_choice.value
    add_to_library(bundled_checkpoint("amil-phantom"), "my-new-amil")  # a model just trained
    refresh_all()
    names = [entry.name for _, entry in widget._model_choices()]
    assert "my-new-amil" in names
    assert widget.model_choice.value.path == chosen.path, "switched to the new model silently"


def test_amil_widget_runs_off_thread_and_aligns_grid(make_napari_viewer, qtbot, monkeypatch):
    _bundled("bag")
    import threading

    import torch

    from histoview.viewer import _models
    from histoview.viewer._cpu_share import original_threads, threads_for
    from histoview.viewer._explain_widget import ExplainWidget
    from histoview.viewer._sample_data import phantom_layers

    computed = []

    def explain_read(*args, **kwargs):
        computed.append((threading.current_thread(), torch.get_num_threads()))
        return real(*args, **kwargs)

    real = _models.explain_read
    monkeypatch.setattr(_models, "explain_read", explain_read)

    viewer = make_napari_viewer()
    data, kwargs, _ = phantom_layers("invasive", seed=3)[0]
    kwargs["translate"] = (10.0, 20.0)  # an offset image must still line up
    image = viewer.add_image(data, **kwargs)
    widget = ExplainWidget(viewer, "amil")
    assert widget.model_choice.value is not None
    widget.image_choice.value = image
    widget.run()
    # run() returns at once; the explanation arrives later from the worker
    assert widget.busy and widget.last_explanation is None
    _wait_for_result(qtbot, widget)
    expl = widget.last_explanation
    assert expl is not None and expl.method == "amil"
    # computed in the worker; on the CPU with one core fewer, one left for the event loop
    [(thread, threads)] = computed
    assert thread is not threading.main_thread()
    assert threads == (original_threads() if torch.cuda.is_available() else threads_for(True))
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
    from histoview.viewer._notice import viewer_text_overlay

    assert "research use only" in viewer_text_overlay(viewer).text.lower()
    assert expl.predicted_label in widget.result.value


def test_error_is_reported_not_raised(make_napari_viewer):
    from histoview.viewer._explain_widget import ExplainWidget

    viewer = make_napari_viewer()
    widget = ExplainWidget(viewer, "amil")
    widget.run()  # no image layer
    assert "open an image first" in widget.result.value


def test_scale_bar_in_micrometres_and_shortcuts(make_napari_viewer, qtbot, tmp_path):
    _bundled("image")
    from histoview.viewer._pathology_view import SHORTCUTS, show_only, toggle_current
    from histoview.viewer._sample_data import phantom_layers
    from histoview.viewer._scale_bar import scale_bar

    viewer = make_napari_viewer()
    data, kwargs, _ = phantom_layers("invasive", seed=3)[0]  # calibrated: 0.5 um/px
    viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    assert scale_bar(viewer).visible and tuple(map(str, viewer.layers[0].units)) == (
        "micrometer",
        "micrometer",
    )
    bound = {
        str(key).replace("Ctrl", "Control").replace("+", "-"): action
        for key, action in viewer.keymap.items()
    }
    assert set(SHORTCUTS) <= set(bound)
    bound["Control-Shift-E"](viewer)  # run with the keyboard
    _wait_for_result(qtbot, widget)
    widget.method_choice.value = "dt-gradcam"
    widget.run()
    _wait_for_result(qtbot, widget)
    first, second = _explanations(viewer)
    assert second.visible and not first.visible  # the new overlay shown alone, over tissue
    show_only(viewer, 1)
    assert first.visible and not second.visible
    shown = viewer.layers.selection.active
    toggle_current(viewer)
    assert not shown.visible


def test_a_calibrated_image_opened_through_the_reader_shows_its_scale_bar_at_once(
    make_napari_viewer, tmp_path
):
    """No dock needed: File > Open of a TIFF with a pixel size turns napari's scale bar on;
    an image without one (a PNG) leaves it off, as nothing says how long a pixel is."""
    import tifffile
    from imageio.v3 import imwrite

    from histoview.viewer._scale_bar import scale_bar

    rgb = np.full((64, 80, 3), 200, np.uint8)
    plain = tmp_path / "plain.png"
    imwrite(plain, rgb)
    viewer = make_napari_viewer()
    viewer.open(str(plain), plugin="histoview")
    assert not scale_bar(viewer).visible
    calibrated = tmp_path / "calibrated.tif"  # 0.5 um/px
    tifffile.imwrite(calibrated, rgb, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    viewer.open(str(calibrated), plugin="histoview")
    assert scale_bar(viewer).visible
    assert str(viewer.layers["calibrated.tif"].units[-1]) == "micrometer"


@pytest.mark.parametrize("dock", ["Whole slide", "Compare methods"])
def test_the_slide_and_compare_docks_turn_on_the_scale_bar_and_shortcuts(make_napari_viewer, dock):
    from histoview.viewer._pathology_view import SHORTCUTS
    from histoview.viewer._sample_data import phantom_layers
    from histoview.viewer._scale_bar import scale_bar

    viewer = make_napari_viewer()
    data, kwargs, _ = phantom_layers("invasive", seed=3)[0]  # calibrated: 0.5 um/px
    viewer.add_image(data, **kwargs)
    assert not scale_bar(viewer).visible  # added by a script: no reader, no dock yet
    viewer.window.add_plugin_dock_widget("histoview", dock)
    assert scale_bar(viewer).visible
    bound = {str(key).replace("Ctrl", "Control").replace("+", "-") for key in viewer.keymap}
    assert set(SHORTCUTS) <= bound


def test_the_first_model_list_is_read_off_the_main_thread(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """A session's first dock: the list (which imports torch) is read by the warm-up thread,
    the box fills in when it arrives, and Explain pressed before works with its default."""
    import threading

    from histoview.viewer import _models

    ready = threading.Event()  # as when the registry was never imported
    callers: list = []
    listed = _models.checkpoint_entries

    def checkpoint_entries(method):
        # a call on the main thread before the list is ready would import torch there
        callers.append(threading.current_thread() is threading.main_thread() and not ready.is_set())
        entries = listed(method)
        ready.set()
        return entries

    monkeypatch.setattr(_models, "listing_ready", ready.is_set)
    monkeypatch.setattr(_models, "checkpoint_entries", checkpoint_entries)
    viewer = make_napari_viewer()
    _open_png(viewer, tmp_path)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    assert widget.model_choice.value is None and not callers  # nothing listed yet
    widget.run()  # pressed at once: the worker reads the list and takes its first model
    _wait_for_result(qtbot, widget)
    assert not widget.result.value.startswith("error"), widget.result.value
    assert _explanations(viewer) and widget.last_explanation.method == "gradcam"
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    assert callers and not any(callers), "the first model list was read on the main thread"
    [(_, first), *_] = listed("gradcam")
    assert widget.model_choice.value.path == first.path
    assert (
        widget.last_explanation.checkpoint_sha256
        == _models.load_model_for("gradcam", first.path)[2]
    )


def test_opening_the_first_dock_imports_torch_off_the_main_thread(tmp_path):
    """In a fresh process (nothing imported torch yet), opening a dock from the Plugins menu
    leaves torch to the warm-up thread, and the model box fills in; Explain pressed at once
    on an image does not import it on the main thread either (a click is not a freeze)."""
    import subprocess
    import sys

    script = """
import sys, threading, time
importer = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not importer:
            importer.append(threading.current_thread().name)
sys.meta_path.insert(0, Watch())
import napari
import numpy as np
viewer = napari.Viewer(show=False)
rng = np.random.default_rng(0)  # not one flat colour: something to explain
viewer.add_image(rng.integers(60, 230, (256, 256, 3), dtype=np.uint8), rgb=True, name="tissue")
_, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
if len(sys.argv) > 1:
    widget.run()  # pressed before the model list arrived
app = napari.qt.get_qapp()
t0 = time.time()
while (widget.model_choice.value is None or widget._worker is not None) and time.time() - t0 < 120:
    app.processEvents()
    time.sleep(0.01)
print("importer", importer, "listed", widget.model_choice.value is not None)
viewer.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "importer ['histoview-warm-up'] listed True" in done.stdout, done.stdout + done.stderr
    clicked = subprocess.run(
        [sys.executable, "-c", script, "click"], capture_output=True, text=True, timeout=240
    )
    assert clicked.returncode == 0, clicked.stderr[-2000:]
    assert "listed True" in clicked.stdout, clicked.stdout + clicked.stderr
    assert "importer ['MainThread']" not in clicked.stdout, "the click imported torch"


def test_an_image_without_tissue_is_an_error_in_the_dock_not_a_crash(make_napari_viewer, qtbot):
    """Explain on a blank image: the dock says why, and nothing is raised into Qt (napari's
    workers re-raise an error in the main thread unless told the dock handles it: a second,
    raw traceback notification in napari, an abort in a script without napari's hooks)."""
    import sys

    viewer = make_napari_viewer()
    viewer.add_image(np.full((256, 256, 3), 200, np.uint8), rgb=True, name="glass")
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    qtbot.waitUntil(lambda: widget.model_choice.value is not None, timeout=60_000)
    raised = []
    hook, sys.excepthook = sys.excepthook, lambda *exc: raised.append(exc[1])
    try:
        widget.run()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
        qtbot.wait(50)
    finally:
        sys.excepthook = hook
    assert widget.result.value.startswith("error:") and "flat colour" in widget.result.value
    assert raised == [], raised
    assert viewer.layers[-1].name == "glass", "no overlay"


def test_the_view_refits_once_the_dock_has_taken_its_room(make_napari_viewer, qtbot, tmp_path):
    """napari gives a new dock its room a few event-loop turns after it opens; the tissue is
    then fitted to the narrower canvas, not left at the zoom of the wider one."""
    viewer = make_napari_viewer(show=True)
    _open_png(viewer, tmp_path)
    qtbot.wait(50)
    wide = viewer.canvas.size
    viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    qtbot.waitUntil(lambda: viewer.canvas.size[1] < wide[1], timeout=10_000)
    qtbot.wait(100)
    shown = viewer.scene.camera.zoom
    viewer.reset_view()
    assert shown == pytest.approx(viewer.scene.camera.zoom)


def test_a_view_the_user_moved_is_kept_while_the_docks_settle(make_napari_viewer, qtbot):
    from histoview.viewer._pathology_view import fit_while_settling

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((460, 700, 3), np.uint8), rgb=True)
    fit_while_settling(viewer)
    qtbot.wait(20)
    viewer.canvas.size = (500, 300)  # the dock took its room: fitted again
    fitted = viewer.scene.camera.zoom
    viewer.reset_view()
    assert fitted == pytest.approx(viewer.scene.camera.zoom)
    viewer.scene.camera.zoom = fitted * 3  # the user zooms in
    viewer.canvas.size = (500, 400)
    assert viewer.scene.camera.zoom == pytest.approx(fitted * 3)


def test_a_run_is_shown_alone_with_its_edges_and_they_come_back(make_napari_viewer):
    """Showing one run hides every other run's layers (graph edges too) and leaves the image
    alone; stepping back to a graph run shows its edges as they were, hidden edges stay
    hidden; side by side (grid on) the compare view decides and nothing changes."""
    from histoview.viewer._compat import grid_of
    from histoview.viewer._layer_updates import show_run_alone

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8), np.float32))

    def run(key, edges_shown):
        meta = {"histoview": {"run_key": key}}
        edges = viewer.add_vectors(
            np.zeros((1, 2, 2)), visible=edges_shown, metadata={"histoview": meta["histoview"]}
        )
        main = viewer.add_points(
            np.zeros((1, 2)), metadata={**meta, "histoview_explanation": object()}
        )
        return edges, main

    g_edges, g_points = run("graph", True)
    h_edges, h_points = run("dense", False)
    show_run_alone(viewer, "dense")
    assert h_points.visible and not h_edges.visible and image.visible
    assert not g_points.visible and not g_edges.visible
    show_run_alone(viewer, "graph")
    assert g_points.visible and g_edges.visible
    assert not h_points.visible and not h_edges.visible
    grid_of(viewer).enabled = True
    show_run_alone(viewer, "dense")
    assert g_points.visible and not h_points.visible
