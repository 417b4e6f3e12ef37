"""The compare view in a real napari viewer: small untrained models, and the bundled demo
weights from the plugin menu with nothing preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# PyG pulls in triton; loaded after a viewer's OpenGL context exists (Mesa llvmpipe under Xvfb),
# triton's LLVM clashes with Mesa's and the process segfaults. Load it at collection instead.
import torch
import torch_geometric  # noqa: F401, E402

pytestmark = pytest.mark.gui

META = {"classes": ["benign", "malignant"]}
SCREENSHOT = Path("/tmp/compare_check/side_by_side.png")


@pytest.fixture(scope="module")
def phantom():
    from histoview.viewer._sample_data import phantom_layers

    return phantom_layers("invasive", seed=0)


@pytest.fixture(scope="module")
def models():
    import torch

    from histoview.models import create_model

    torch.manual_seed(0)
    return {
        "amil": create_model("amil"),
        "cnn": create_model("test_cnn"),
        "graph": create_model("test_rsf_attention"),
    }


@pytest.fixture(scope="module")
def explanations(phantom, models):
    from histoview.explain.run import explain_array

    image, kwargs, _ = phantom[0]
    mpp = kwargs["metadata"]["histoview"]["pixel_size_um"]
    nets = {
        "amil": models["amil"],
        "graph": models["graph"],
        "gradcam": models["cnn"],
        "dt-gradcam": models["cnn"],
    }
    return {
        m: explain_array(image, m, net, META, None, pixel_size_um=mpp) for m, net in nets.items()
    }


def _setup(
    make_napari_viewer,
    phantom,
    explanations,
    methods=("amil", "gradcam", "dt-gradcam"),
    **viewer_kw,
):
    from histoview.viewer._compare import CompareWidget
    from histoview.viewer.overlays import add_explanation_layers

    viewer = make_napari_viewer(**viewer_kw)
    for data, kwargs, kind in phantom:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    base = viewer.layers[0]
    for m in methods:
        add_explanation_layers(viewer, base, explanations[m])
    widget = CompareWidget(viewer)
    assert widget.image_layer() is base
    return viewer, base, widget


def _panels(viewer):
    """Visible layers of each non-empty grid cell."""
    out = []
    for _, idx in viewer.canvas.grid.iter_viewboxes(viewer.layers):
        lays = [viewer.layers[i] for i in idx if viewer.layers[i].visible]
        if lays:
            out.append(lays)
    return out


def _user_layers(viewer):
    from histoview.viewer._compare_parts import role

    return [lay for lay in viewer.layers if role(lay) is None]


def _layer_list_rows(viewer, widget):
    """Names of the rows napari's layer list shows (hidden rows left out), top first."""
    from histoview.viewer._compare_panels import layer_list_view

    view = layer_list_view(widget)
    assert view is not None, "napari's layer list view was not found"
    model = view.model()
    return [model.index(r, 0).data() for r in range(model.rowCount()) if not view.isRowHidden(r)]


def test_side_by_side_then_stacked(make_napari_viewer, phantom, explanations, models, qtbot):
    from napari.layers import Image, Points

    from histoview.explain.methods import predictor_for
    from histoview.viewer._compare_parts import role

    methods = ("amil", "graph", "gradcam", "dt-gradcam")
    viewer, base, widget = _setup(make_napari_viewer, phantom, explanations, methods, show=True)
    user_before = [lay.unique_id for lay in viewer.layers]
    viewer.window.resize(1600, 1000)
    viewer.window.add_dock_widget(widget, name="Compare methods", area="right")
    mpp = base.metadata["histoview"]["pixel_size_um"]
    nets = {
        "amil": models["amil"],
        "graph": models["graph"],
        "gradcam": models["cnn"],
        "dt-gradcam": models["cnn"],
    }
    for m in methods:  # curves for the dock in the picture
        widget.register_predictor(
            explanations[m], predictor_for(m, nets[m], META, pixel_size_um=mpp)
        )
    widget.steps = 3
    widget.analyse()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    widget.side_button.click()  # as a user: panel layers made one per event-loop turn
    assert not widget.side_by_side_on  # not at once: the viewer stays responsive
    qtbot.waitUntil(lambda: widget.side_by_side_on and not widget.running, timeout=60_000)

    assert viewer.canvas.grid.enabled
    panels = _panels(viewer)
    assert len(panels) == len(methods)
    assert viewer.canvas.grid.stride == -3  # tissue + overlay + edges or threshold outline
    rows, cols = viewer.canvas.grid.actual_shape(viewer.layers)
    assert rows * cols >= len(methods) and (rows - 1) * cols < len(methods)
    seen = []
    for lays in panels:
        tissue = [lay for lay in lays if role(lay) == "tissue"]
        assert len(tissue) == 1 and tissue[0].data is base.data  # shared, never copied
        assert lays[0] is tissue[0]  # the tissue is under the overlays
        [main] = [lay for lay in lays if "histoview_explanation" in lay.metadata]
        method = main.metadata["histoview_explanation"].method
        seen.append(method)
        title = tissue[0].name
        assert tissue[0].name_overlay.visible and "\n" in title  # the full title, wrapped
        assert title.split("\n")[0] == main.name.split(": ")[0]
        contrast = main.metadata["histoview"]["contrast"]
        if not contrast:  # a near-constant map is not painted, and the title says so
            assert main.opacity == 0 and "no contrast" in title
        if isinstance(main, Image):
            assert tuple(main.contrast_limits) == (0.0, 1.0)
            assert main.colorbar.visible == contrast
            assert main.colorbar.position == "middle_right"  # beside the tissue
            assert np.nanmax(main.data) == pytest.approx(1.0) and np.nanmin(main.data) >= 0
            [outline] = [lay for lay in lays if role(lay) == "outline"]
            assert lays.index(outline) > lays.index(main)
            drawn = np.isfinite(outline.data).any()
            assert drawn == (method == "dt-gradcam")  # only DT Grad-CAM has a threshold
        else:
            assert isinstance(main, Points) and tuple(main.face_contrast_limits) == (0.0, 1.0)
            assert main.face_colorbar.visible == contrast
            assert len(lays) == 3  # points + edges in one panel
    assert sorted(seen) == sorted(methods)
    assert not base.visible  # the base is in no panel

    qtbot.wait(300)  # let the dock settle the canvas size, then fit the panels
    widget.side_by_side()
    qtbot.wait(100)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(SCREENSHOT), canvas_only=False, flash=False)
    assert SCREENSHOT.stat().st_size > 10_000

    widget.stacked()
    assert not viewer.canvas.grid.enabled and not widget.side_by_side_on
    assert [lay.unique_id for lay in _user_layers(viewer)] == user_before
    assert base.visible and all(not lay.visible for lay in viewer.layers if role(lay))
    amil = next(
        lay
        for lay in viewer.layers
        if lay.metadata.get("histoview_explanation") is explanations["amil"]
    )
    grid = explanations["amil"].geometry.to_grid(explanations["amil"].values, fill=0.0)
    np.testing.assert_allclose(amil.data, grid)  # raw values are back
    assert not amil.colorbar.visible and not amil.name_overlay.visible


def test_switching_keeps_the_same_layers(make_napari_viewer, phantom, explanations, qtbot):
    """Side by side and back, twice: the same layer objects, the tissue data never copied,
    no layer made or removed after the first time."""
    from histoview.viewer._compare_parts import role

    viewer, base, widget = _setup(
        make_napari_viewer, phantom, explanations, ("amil", "graph", "gradcam")
    )
    widget.side_by_side()
    first = {lay.unique_id: lay for lay in viewer.layers}
    tissue_data = [lay.data for lay in viewer.layers if role(lay) == "tissue"]
    assert len(tissue_data) == 3 and all(d is base.data for d in tissue_data)
    inserted, removed = [], []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value))
    for _ in range(2):
        widget.stacked()
        assert not widget.side_by_side_on
        widget.side_by_side()
        assert widget.side_by_side_on and len(_panels(viewer)) == 3
    widget.stacked()
    assert not inserted and not removed
    assert {lay.unique_id: lay for lay in viewer.layers} == first
    assert all(lay.data is base.data for lay in viewer.layers if role(lay) == "tissue")


def test_no_helper_layers_in_the_layer_list(make_napari_viewer, phantom, explanations, qtbot):
    """napari's layer list shows the user's layers only, side by side and stacked, and the
    layer controls never show a panel layer."""
    from histoview.viewer._compare_parts import role

    viewer, base, widget = _setup(make_napari_viewer, phantom, explanations, ("amil", "graph"))
    viewer.window.add_dock_widget(widget, name="Compare methods", area="right")
    names = [lay.name for lay in reversed(_user_layers(viewer))]
    assert _layer_list_rows(viewer, widget) == names
    widget.side_button.click()
    qtbot.waitUntil(lambda: widget.side_by_side_on and not widget.running, timeout=60_000)
    assert any(role(lay) for lay in viewer.layers)  # the panels' layers exist ...
    assert _layer_list_rows(viewer, widget) == names  # ... but are not listed
    assert role(viewer.layers.selection.active) is None
    assert not any("spacer" in lay.name for lay in viewer.layers)
    widget.stacked()
    qtbot.wait(50)
    assert _layer_list_rows(viewer, widget) == names


def test_threshold_slider(make_napari_viewer, phantom, explanations):
    viewer, base, widget = _setup(make_napari_viewer, phantom, explanations)
    dt = next(
        lay
        for lay in viewer.layers
        if lay.metadata.get("histoview_explanation") is explanations["dt-gradcam"]
    )
    viewer.layers.selection.active = dt
    assert widget.heatmap_layer() is dt
    # DT Grad-CAM starts at its own threshold (its values are in [0, 1])
    assert widget.threshold_slider.value() == round(100 * explanations["dt-gradcam"].threshold)
    raw = explanations["dt-gradcam"].values
    widget.set_threshold(0.8)
    assert "0.80" in widget.threshold_label.text()
    shown = np.isfinite(dt.data)
    np.testing.assert_array_equal(shown, raw >= 0.8)
    np.testing.assert_allclose(dt.data[shown], raw[shown])
    widget.set_threshold(0)
    assert "off" in widget.threshold_label.text() and np.isfinite(dt.data).all()

    gc = next(
        lay
        for lay in viewer.layers
        if lay.metadata.get("histoview_explanation") is explanations["gradcam"]
    )
    viewer.layers.selection.active = gc
    assert widget.threshold_slider.value() == 0
    widget.set_threshold(0.5)
    values = explanations["gradcam"].values
    cut = values.min() + 0.5 * (values.max() - values.min())
    np.testing.assert_array_equal(np.isfinite(gc.data), values >= cut - 1e-6)


def test_run_all_methods_in_worker(make_napari_viewer, phantom, models, qtbot):
    from histoview.models.checkpoint import CheckpointError
    from histoview.viewer._compare import CompareWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = phantom[0]
    viewer.add_image(data, **kwargs)
    widget = CompareWidget(viewer)
    nets = {
        "amil": models["amil"],
        "graph": models["graph"],
        "gradcam": models["cnn"],
        "dt-gradcam": models["cnn"],
    }

    threads = []

    def load(method):
        threads.append(torch.get_num_threads())  # in the worker, in one of its steps
        if method not in nets:
            raise CheckpointError(f"no demo weights for {method}")
        return nets[method], dict(META), None

    widget._load = load
    widget.steps = 3
    widget.run_all()
    assert widget._worker is not None  # returns at once; the work runs in a thread
    qtbot.waitUntil(lambda: not widget.running, timeout=80_000)
    assert "skipped" in widget.status.text() and "rmcg" in widget.status.text()
    assert "error" not in widget.status.text()
    # on the CPU, torch computed on one core fewer: one left for the viewer's event loop
    from histoview.viewer._cpu_share import original_threads, threads_for

    assert set(threads) == {original_threads() if torch.cuda.is_available() else threads_for(True)}
    n = len(nets)
    assert widget.table.rowCount() == n and widget.table.columnCount() == n
    assert widget.table.item(0, 0).text() == "-"  # Spearman above the diagonal, IoU below
    rho = widget.agreement["spearman"][0][1]
    assert widget.table.item(0, 1).text() == f"{rho:.2f}"
    assert widget.table.item(1, 0).text() == f"{widget.agreement['topk_iou'][1][0]:.2f}"
    assert set(widget.faithfulness) == set(nets)
    for res in widget.faithfulness.values():
        assert len(res.deletion) == 4 and 0 <= res.deletion_auc <= 1
    # small multiples, one plot per method, drawn in the worker and shown as a picture
    drawn = [ax for ax in widget.figure.axes if ax.lines]
    assert len(drawn) == n and all(len(ax.lines) == 2 for ax in drawn)
    assert not widget.figure_view.pixmap().isNull()
    from histoview.viewer._compare_parts import explanation_layers

    assert len(explanation_layers(viewer.layers)) == n


def test_run_all_from_the_menu_with_defaults(make_napari_viewer, phantom, qtbot, monkeypatch):
    """The Plugins menu's dock, nothing preset, bundled demo weights: one click adds every
    method's overlay; the graph method's faithfulness drops nodes from its graph, with one
    nuclei detection for the explanation and all steps, and one batched forward pass."""
    import histoview.preprocessing.nuclei as nuclei_module
    from histoview.explain.methods import list_methods
    from histoview.explain.run import load_for_method
    from histoview.viewer._compare_parts import explanation_layers

    available = []
    for method in list_methods(run_all=True):
        try:
            load_for_method(method)
        except Exception:  # not bundled (the status line lists it)
            continue
        available.append(method)
    assert {"amil", "graph", "gradcam", "dt-gradcam"} <= set(available)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Compare methods")
    data, kwargs, _ = phantom[0]
    viewer.add_image(data, **kwargs)
    from histoview.models.inputs import forget_graphs
    from histoview.viewer import _models

    _models.clear()  # nothing explained or detected on this image before
    forget_graphs()
    detections = []
    real = nuclei_module.detect_nuclei
    monkeypatch.setattr(
        nuclei_module, "detect_nuclei", lambda *a, **k: detections.append(1) or real(*a, **k)
    )
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert "error" not in widget.status.text(), widget.status.text()
    drawn = sorted(
        lay.metadata["histoview_explanation"].method for lay in explanation_layers(viewer.layers)
    )
    assert drawn == sorted(available)
    assert set(widget.faithfulness) == set(available)
    assert all(r.perturbation == "model input" for r in widget.faithfulness.values())
    graph = widget.faithfulness["graph"]
    assert graph.elements == "nuclei" and len(graph.deletion) == widget.steps + 1
    assert len(detections) == 1  # the explanation's, reused by faithfulness: not one per step
    [(_, predict, _)] = [v for v in widget._predictors.values() if v[0].method == "graph"]
    assert predict.forward_passes == 1  # every step of both curves in one batch


def test_analyse_existing_with_tiny_predictor(make_napari_viewer, phantom, explanations, qtbot):
    viewer, base, widget = _setup(make_napari_viewer, phantom, explanations, ("amil", "gradcam"))

    def predict(images):  # brighter image -> more "malignant": enough to draw curves
        p = np.asarray(images, np.float64).mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - p, p], axis=1)

    widget.register_predictor(explanations["gradcam"], predict)
    widget.steps = 4
    widget.analyse()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget.table.rowCount() == 2
    assert list(widget.faithfulness) == ["gradcam"]
    assert "amil: no model" in widget.status.text()


def test_exports_never_overwrite_silently(make_napari_viewer, phantom, explanations, tmp_path):
    import json

    viewer, base, widget = _setup(make_napari_viewer, phantom, explanations, ("amil", "dt-gradcam"))
    asked = []
    widget._ask_save_path = lambda caption, suggested, filters: str(tmp_path / asked.pop(0))
    widget._confirm = lambda question: False

    asked[:] = ["compare.png"]
    png = widget.save_png()
    assert png == tmp_path / "compare.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.read_bytes()
    asked[:] = ["compare.png"]
    again = widget.save_png()  # exists, not confirmed: a new name
    assert again == tmp_path / "compare-1.png" and png.read_bytes() == before

    asked[:] = ["report.pdf"]
    pdf = widget.save_pdf()
    assert pdf.read_bytes()[:5] == b"%PDF-"

    asked[:] = ["slide.geojson"]
    files = widget.export_annotations()
    names = sorted(p.name for p in files)
    assert names == [
        "slide.amil.csv",
        "slide.amil.geojson",
        "slide.dt-gradcam.csv",
        "slide.dt-gradcam.geojson",
    ]
    assert json.loads((tmp_path / "slide.amil.geojson").read_text())["type"] == "FeatureCollection"
    asked[:] = ["slide.geojson"]
    assert all("-1." in p.name for p in widget.export_annotations())

    widget._confirm = lambda question: True  # confirmed: overwritten in place
    asked[:] = ["slide.geojson"]
    assert sorted(p.name for p in widget.export_annotations()) == names


def test_errors_reach_the_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Compare methods")
    widget.side_by_side()  # no image
    assert "select an image layer" in widget.status.text()
    viewer.add_image(np.zeros((20, 30, 3), np.uint8), rgb=True)
    widget.side_by_side()  # no explanations
    assert "no explanations" in widget.status.text() and not viewer.canvas.grid.enabled
    assert widget.save_png() is None  # the dialog is never reached without explanations


def test_the_dock_table_marks_pairs_explaining_different_classes(qtbot):
    from qtpy.QtWidgets import QTableWidget

    from histoview.viewer._compare_results import fill_agreement_table

    table = QTableWidget(0, 0)
    qtbot.addWidget(table)
    record = {
        "methods": ["amil", "graph"],
        "explains": ["malignant", "benign"],
        "spearman": [[1.0, 0.08], [0.08, 1.0]],
        "topk_iou": [[1.0, 0.05], [0.05, 1.0]],
    }
    fill_agreement_table(table, record)
    assert table.item(0, 1).text() == "0.08" and table.item(1, 0).text() == "0.05"
    assert table.item(0, 1).font().italic()  # grey italics: a mark would not fit the cell
    assert table.horizontalHeaderItem(1).toolTip() == "graph"  # the full name on hover
    assert "different classes (malignant vs benign)" in table.item(0, 1).toolTip()
    fill_agreement_table(table, {**record, "explains": ["malignant", "malignant"]})
    assert not table.item(0, 1).font().italic()
    assert "different classes" not in table.item(0, 1).toolTip()
    # rows and columns numbered, the key above the table: nothing cut in a narrow dock
    assert [table.horizontalHeaderItem(j).text() for j in range(2)] == ["1", "2"]
    assert [table.verticalHeaderItem(i).text() for i in range(2)] == ["1", "2"]
    long = {
        **record,
        "methods": ["amil", "graph", "gradcam (cspresnet50-fpn-se-demo)", "dt-gradcam"],
        "explains": ["malignant"] * 4,
        "spearman": np.eye(4).tolist(),
        "topk_iou": np.eye(4).tolist(),
    }
    table.resize(280, 200)
    key = fill_agreement_table(table, long)
    assert key.replace("\u00a0", " ").replace("\u2011", "-") == (
        "1 amil · 2 graph · 3 gradcam (cspresnet50-fpn-se-demo) · 4 dt-gradcam"
    )
    table.show()
    qtbot.waitExposed(table)
    header, metrics = table.horizontalHeader(), table.fontMetrics()
    margin = 2 * (table.style().pixelMetric(table.style().PM_FocusFrameHMargin) + 1)
    for j in range(4):  # the widest value, and the header, whole in every column
        assert header.sectionSize(j) - margin >= metrics.horizontalAdvance("-0.35"), j
