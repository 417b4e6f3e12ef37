"""The viewer reuses what it has: models loaded once, an overlay made again with the same
settings keeps its layers, side by side and stacked by the buttons (one step per event-loop
turn) create no layers after the first time, and a switch interrupted by the other one
leaves a whole state."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _open_png(viewer, tmp_path, seed=5):
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom

    path = tmp_path / "tissue.png"
    Image.fromarray(make_phantom("invasive", preset="breakhis", seed=seed).image).save(path)
    [layer] = viewer.open(path, plugin="histoview")
    return layer


def _explanations(viewer):
    return [lay for lay in viewer.layers if "histoview_explanation" in lay.metadata]


def test_same_settings_keep_the_overlay_and_the_model_loads_once(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import histoview.explain.run as run
    from histoview.viewer import _models

    _models.clear()
    loads = []
    original = run.load_for_method
    monkeypatch.setattr(
        run, "load_for_method", lambda *a, **k: loads.append(a) or original(*a, **k)
    )
    viewer = make_napari_viewer()
    _open_png(viewer, tmp_path)
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    activations = []
    viewer.layers.selection.events.active.connect(lambda e: activations.append(e.value))

    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not widget.result.value.startswith("error"), widget.result.value
    [first] = _explanations(viewer)
    assert viewer.layers.selection.active is first
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    widget.run()  # the same settings: the same layer, nothing inserted
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert _explanations(viewer) == [first] and not inserted
    assert first.metadata["histoview_explanation"] is widget.last_explanation
    assert len(loads) == 1, "the checkpoint was read again"

    predicted = widget.last_explanation.predicted_label
    other = next(c for c in widget.class_choice.choices if c not in ("predicted", predicted))
    widget.class_choice.value = other  # another class: another overlay
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert len(_explanations(viewer)) == 2 and len(inserted) == 1
    assert len(loads) == 1
    assert viewer.layers.selection.active is inserted[0]


def _dense_explanation(method: str, values: np.ndarray, image_shape: tuple[int, int]):
    """An explanation of ``method`` whose ``values`` cover an image of ``image_shape``."""
    from histoview.explain.base import DenseMap, Explanation

    return Explanation(
        method=method,
        model="test_cnn",
        classes=("a", "b"),
        probabilities=np.array([0.4, 0.6]),
        target_class=1,
        values=values,
        geometry=DenseMap(image_shape),
    )


def _in_pixels():
    """The placement of an image layer in pixels at the origin."""
    from histoview.viewer.overlays import Placement

    return Placement((1.0, 1.0), (0.0, 0.0), ("pixel", "pixel"), "tissue", "id-1")


def test_swap_changes_data_in_place():
    """swap_layer_data gives an existing layer new values without a new layer."""
    from napari.layers import Image

    from histoview.viewer._layer_updates import swap_layer_data
    from histoview.viewer.overlays import explanation_layer_data

    def expl(values):
        return _dense_explanation("gradcam", values, (20, 30))

    where = _in_pixels()
    old = explanation_layer_data(expl(np.linspace(0, 1, 600).reshape(20, 30)), where)
    [layer] = [Image(d, **k) for d, k, _ in old]
    layer.metadata["histoview_compare"] = {"raw": None}  # the compare view's record
    new_values = np.linspace(1, 0, 600, dtype=np.float32).reshape(20, 30)
    assert swap_layer_data([layer], explanation_layer_data(expl(new_values), where))
    np.testing.assert_array_equal(layer.data, new_values)
    assert "histoview_compare" not in layer.metadata  # made again from the new values
    assert not swap_layer_data([layer, layer], old)  # layers that do not correspond


def _compare_setup(make_napari_viewer):
    import torch

    from histoview.explain.run import explain_array
    from histoview.models import create_model
    from histoview.viewer._compare import CompareWidget
    from histoview.viewer._sample_data import phantom_layers
    from histoview.viewer.overlays import add_explanation_layers

    [(image, kwargs, kind)] = phantom_layers("invasive", seed=0)[:1]
    viewer = make_napari_viewer()
    base = getattr(viewer, f"add_{kind}")(image, **kwargs)
    torch.manual_seed(0)
    cnn = create_model("test_cnn")
    meta = {"classes": ["benign", "malignant"]}
    for target in (0, 1):
        for method in ("gradcam", "dt-gradcam"):
            expl = explain_array(image, method, cnn, meta, None, target_class=target)
            add_explanation_layers(viewer, base, expl)
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare methods", area="right")
    return viewer, base, widget


def _state(viewer):
    from histoview.viewer._compare_parts import role

    return [
        (lay.unique_id, lay.visible, float(lay.opacity), tuple(np.round(lay.contrast_limits, 6)))
        for lay in viewer.layers
        if role(lay) is None
    ]


def test_buttons_switch_in_steps_without_new_layers(make_napari_viewer, qtbot):
    from histoview.viewer._compare_parts import role

    viewer, base, widget = _compare_setup(make_napari_viewer)
    stacked_state = _state(viewer)
    widget.side_button.click()
    qtbot.waitUntil(lambda: widget.side_by_side_on and not widget.running, timeout=60_000)
    assert viewer.canvas.grid.enabled and not base.visible
    tissues = [lay for lay in viewer.layers if role(lay) == "tissue"]
    assert len(tissues) == 4 and all(t.visible and t.data is base.data for t in tissues)
    assert all(tuple(lay.contrast_limits) == (0.0, 1.0) for lay in _explanations(viewer))
    inserted, removed = [], []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value))
    for _ in range(2):
        widget.stacked_button.click()
        qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
        assert not widget.side_by_side_on and not viewer.canvas.grid.enabled
        assert _state(viewer) == stacked_state
        widget.side_button.click()
        qtbot.waitUntil(lambda: widget.side_by_side_on and not widget.running, timeout=60_000)
    assert not inserted and not removed


def test_a_switch_interrupted_by_the_other_leaves_a_whole_state(make_napari_viewer, qtbot):
    from histoview.viewer._compare_parts import role

    viewer, base, widget = _compare_setup(make_napari_viewer)
    stacked_state = _state(viewer)
    widget.side_by_side()  # panels made
    widget.stacked()
    widget.side_button.click()
    for _ in range(3):  # the plan, the grid, the first panel: one event-loop turn each
        widget._pump()
    assert 0 < len(widget._pending_steps) < 5 and viewer.canvas.grid.enabled  # mid-way
    widget.stacked_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert not widget.side_by_side_on and not viewer.canvas.grid.enabled
    assert _state(viewer) == stacked_state
    assert not any(lay.visible for lay in viewer.layers if role(lay) is not None)
    widget.side_button.click()
    widget._pump()
    widget._pump()  # the grid is on, no panel shown yet; then the other way round by a script
    widget.stacked()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert _state(viewer) == stacked_state and not viewer.canvas.grid.enabled


def test_run_all_again_recomputes_nothing(monkeypatch):
    """The second "Run all" on the same image gets the explanations and faithfulness
    predictors of the first: no explanation is made again, no model input rebuilt."""
    pytest.importorskip("torch_geometric")
    import histoview.explain.run as run
    from histoview.preprocessing.phantom import make_phantom
    from histoview.viewer import _models
    from histoview.viewer._compare_running import run_all_work

    _models.clear()
    image = make_phantom("invasive", preset="breakhis", seed=4).image
    made = []
    original = run.explain_array
    monkeypatch.setattr(
        run, "explain_array", lambda *a, **k: made.append(a[1]) or original(*a, **k)
    )

    def once():
        gen, yielded = (
            run_all_work(image, False, None, ("amil", "gradcam"), _models.load_model_for, 4),
            [],
        )
        try:
            while True:
                item = next(gen)
                if item[0] == "explanation":
                    yielded.append((item[1], item[3]))
        except StopIteration as stop:
            return yielded, stop.value

    first, result = once()
    assert sorted(made) == ["amil", "gradcam"] and len(result["faithfulness"]) == 2
    again, result2 = once()
    assert sorted(made) == ["amil", "gradcam"], "an explanation was made again"
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(first, again))
    for label, res in result["faithfulness"].items():
        np.testing.assert_allclose(result2["faithfulness"][label].deletion, res.deletion)


def test_docks_load_their_model_in_the_background(make_napari_viewer, qtbot, monkeypatch):
    from histoview.viewer import _models

    _models.clear()
    monkeypatch.setenv("HISTOVIEW_WARMUP", "0")
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("histoview", "Grad-CAM")
    qtbot.wait(200)
    assert _models.cached_models() == 0  # switched off
    monkeypatch.setenv("HISTOVIEW_WARMUP", "1")
    viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    qtbot.waitUntil(lambda: _models.cached_models() == 1, timeout=60_000)


def test_opening_an_image_warms_the_docks_models(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """A user opens an image, then a dock: the dock's default model was loaded meanwhile (its
    first click does not wait for torch), and its model box is filled when it opens."""
    from PIL import Image

    from histoview.preprocessing.phantom import make_phantom
    from histoview.viewer import _models
    from histoview.viewer._reader import read_images

    path = tmp_path / "tissue.png"
    Image.fromarray(make_phantom("benign", preset="breakhis", seed=4).image).save(path)
    _models.clear()
    monkeypatch.setattr(_models, "_OPEN_WARM_UP", [])
    monkeypatch.setattr(_models, "_WARMING", [])  # no dock has begun warming up
    monkeypatch.setattr(_models, "OPEN_WARM_UP_DELAY_S", 0.0)
    read_images(str(path))  # a script's read: no viewer yet, so no warm-up
    assert not _models._OPEN_WARM_UP
    viewer = make_napari_viewer()
    viewer.open(path, plugin="histoview")
    assert len(_models._OPEN_WARM_UP) == 1
    listed = [_models.checkpoint_entries(m) for m in _models.open_warm_up_methods()]
    checkpoints = {entries[0][1].path for entries in listed if entries}  # each dock's default
    assert len(checkpoints) >= 3  # A-MIL, nuclei graph, Grad-CAM (its variants share one)

    # each default loaded (a count would never match if a warm-up an earlier test began
    # lands after _models.clear(), as it did once in CI under load)
    def loaded():
        with _models._LOCK:
            return {str(p) for p in checkpoints} <= {key[1] for key in _models._CACHE}

    qtbot.waitUntil(loaded, timeout=90_000)
    viewer.open(path, plugin="histoview")  # once per session
    assert len(_models._OPEN_WARM_UP) == 1
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    assert widget.model_choice.value is not None  # listed already: no wait for the list


def test_a_dock_warming_up_already_makes_the_open_warm_up_stand_aside(monkeypatch):
    """A dock opened at once after the image warms its own model: the open's warm-up then
    does nothing, so two warm-ups never share the CPU with that dock's first click."""
    from histoview.viewer import _models

    asked = []
    monkeypatch.setattr(_models, "warm_up", lambda todo, **_: asked.append(todo))
    monkeypatch.setattr(_models, "_WARMING", ["a dock's warm-up thread"])
    _models._warm_up_unless_begun()
    assert asked == []
    monkeypatch.setattr(_models, "_WARMING", [])
    _models._warm_up_unless_begun()
    assert asked == [[(m, _models.FIRST_LISTED) for m in _models.open_warm_up_methods()]]
    assert _models.open_warm_up_methods()[-1] == "graph"  # torch-geometric last


def test_a_request_spelling_out_defaults_is_the_same_request():
    import torch

    from histoview.models import create_model
    from histoview.preprocessing.phantom import make_phantom
    from histoview.viewer import _models

    _models.clear()
    torch.manual_seed(0)
    cnn = create_model("test_cnn")
    image = make_phantom("invasive", preset="breakhis", seed=3).image
    meta = {"classes": ["benign", "malignant"]}
    first = _models.explain_once(image, "gradcam", cnn, meta, None)
    same = _models.explain_once(
        image.copy(),
        "gradcam",
        cnn,
        meta,
        None,
        pixel_size_um=None,
        downsample=1.0,
        level=0,
        image_shape=image.shape[:2],
    )
    assert same is first
    other = _models.explain_once(image, "gradcam", cnn, meta, None, target_class=0)
    assert other is not first


def test_an_overlay_runs_its_colours_from_the_maps_lowest_value_to_its_highest():
    """The convention of explain.display, as the report and the compare view's side by side
    show it: near-uniform attention (every patch about 1/N) is not painted as if every patch
    were important, only where it is above the map's lowest."""
    from histoview.explain.agreement import normalise
    from histoview.viewer.overlays import explanation_layer_data

    values = np.full(12, 1 / 12, np.float32)
    values[:3] *= 1.3  # three patches a little above the others
    values = (values / values.sum()).reshape(3, 4)
    expl = _dense_explanation("amil", values, (24, 32))
    [(data, kwargs, kind)] = explanation_layer_data(expl, _in_pixels())
    lo, hi = kwargs["contrast_limits"]
    assert (lo, hi) == pytest.approx((values.min(), values.max()))
    shown = np.clip((values - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(shown, normalise(values), atol=1e-6)  # as the report scales it
    assert shown.ravel()[3:].max() == pytest.approx(0.0)  # the ordinary patches: unpainted


def test_each_nucleus_point_is_as_wide_as_its_nucleus():
    """Points of one mean size (12 px) covered the small nuclei and the stroma between them:
    each point is now the diameter of its own nucleus, from its outline, else from its area
    in um^2 at the explanation's pixel size."""
    from histoview.explain.base import Explanation, NucleiPoints
    from histoview.viewer.overlays import explanation_layer_data

    def disc(cy, cx, r):  # an outline of radius r
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([cy + r * np.sin(t), cx + r * np.cos(t)], axis=1)

    centroids = np.array([[20.0, 20.0], [40.0, 60.0], [70.0, 30.0]])
    radii = np.array([2.5, 4.0, 7.0])  # a lymphocyte, a tumour nucleus, a large one
    geometry = NucleiPoints(
        centroids,
        (96, 96),
        outlines=tuple(disc(cy, cx, r) for (cy, cx), r in zip(centroids, radii)),
        features={"area_um2": np.pi * (radii * 0.5) ** 2},
    )
    expl = Explanation(
        "graph",
        "rsf-attention",
        ("a", "b"),
        np.array([0.3, 0.7]),
        1,
        np.array([0.1, 0.5, 0.9], np.float32),
        geometry,
        extra={"pixel_size_um": 0.5},
    )
    [points] = [
        (d, k) for d, k, kind in explanation_layer_data(expl, _in_pixels()) if kind == "points"
    ]
    np.testing.assert_allclose(points[1]["size"], 2 * radii, rtol=0.01)
    # no outlines: the same sizes from the areas at 0.5 um/px
    import dataclasses

    bare = dataclasses.replace(geometry, outlines=())
    np.testing.assert_allclose(bare.diameters(0.5), 2 * radii, rtol=1e-6)
    assert bare.diameters(None) == 2 * bare.radius  # nothing to size them by
    broken = dataclasses.replace(bare, features={"area_um2": np.array([0.0, 3.0, -1.0])})
    assert broken.diameters(0.5) == 2 * bare.radius  # no NaN sizes from bad areas


def test_the_canvas_notice_wraps_to_the_canvas_instead_of_being_cut_off():
    from histoview import RESEARCH_NOTICE
    from histoview.viewer._notice import NOTICE_CHAR_PX, notice_text

    title = "A-MIL attention: benign (> 0.99) [synthetic demo weights]"
    narrow = notice_text([title, "Grad-CAM: malignant (0.62)"], canvas_width=360)
    lines = narrow.split("\n")
    assert max(map(len, lines)) * NOTICE_CHAR_PX <= 360 - 20
    assert " ".join(narrow.split()) == " ".join(
        f"{title} Grad-CAM: malignant (0.62) {RESEARCH_NOTICE}".split()
    )
    assert lines[1].startswith("  ")  # a title's continuation is indented
    wide = notice_text([title], canvas_width=1200)
    assert wide == f"{title}\n{RESEARCH_NOTICE}"  # one line per title where it fits
    # a canvas squeezed by docks in a small window (217 px seen): still inside it
    squeezed = notice_text([title], canvas_width=217)
    assert max(map(len, squeezed.split("\n"))) * NOTICE_CHAR_PX <= 217 - 20


def test_the_notice_wraps_again_when_the_canvas_width_changes(make_napari_viewer):
    from histoview.viewer._notice import NOTICE_CHAR_PX, set_notice, viewer_text_overlay

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8), np.float32), name="A-MIL attention: benign (> 0.99)")
    layer.metadata["histoview_explanation"] = object()
    viewer.canvas.size = (600, 1200)
    set_notice(viewer, [layer])
    overlay = viewer_text_overlay(viewer)
    assert overlay.text.count("\n") == 1  # the title and the research-use line
    viewer.canvas.size = (600, 300)  # another dock took room
    assert max(map(len, overlay.text.split("\n"))) * NOTICE_CHAR_PX <= 300 - 20
    overlay.text = "the user's own note"
    viewer.canvas.size = (600, 1200)
    assert overlay.text == "the user's own note"  # never overwritten
