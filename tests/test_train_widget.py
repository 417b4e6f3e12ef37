"""The training dock in a real napari viewer: dataset summary, checks, recipes, train, cancel,
resume, library, and its layout beside the explanation dock."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

COLOURS = {"pink": (225, 130, 190), "purple": (95, 60, 160)}


def _noise_image(colour, rng, shape=(56, 84)):
    return np.clip(np.array(colour) + rng.normal(0, 20, (*shape, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Two class folders of 8 small coloured-noise PNGs that differ in colour."""
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            imsave(root / name / f"{name}_{i}.png", _noise_image(colour, rng), check_contrast=False)
    return root


def _amil_widget(viewer, folder, epochs=3):
    from histoview.viewer._train_widget import TrainWidget

    widget = TrainWidget(viewer)
    widget.set_dataset_folder(folder)
    widget.model_choice.setCurrentText("amil")
    widget.epochs.setValue(epochs)
    widget.batch_size.setValue(2)
    widget.device_choice.setCurrentText("cpu")
    return widget


def _library_checkpoint(name="colours-amil"):
    """A small untrained A-MIL checkpoint in the user library (no training needed)."""
    from histoview.models.checkpoint import save_checkpoint
    from histoview.models.library import add_to_library, user_library_dir
    from histoview.models.registry import create_model

    src = user_library_dir().parent / "made" / "m.safetensors"
    save_checkpoint(
        src,
        create_model("amil"),
        {
            "model": "amil",
            "classes": ["pink", "purple"],
            "model_kwargs": {"patch_size": 28},
            "data": {"layout": "folder", "images": 16},
        },
    )
    return add_to_library(src, name)


def _names(explain_widget):
    return [entry.name for entry in explain_widget.model_choice.choices]


def test_dataset_summary_recipes_and_errors(make_napari_viewer, tiny_dataset, tmp_path):
    from histoview.viewer._train_widget import TrainWidget
    from histoview.viewer._train_widget_parts import fmt_duration

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    assert "Research use only, not for diagnosis." in widget.notice.text()
    assert not widget.train_button.isEnabled()  # nothing chosen yet
    widget.set_dataset_folder(tiny_dataset)
    text = widget.summary.text()
    assert "one folder per class" in text and "pink: 8" in text and "purple: 8" in text
    assert "Images: 16" in text and "split is by image" in text
    assert [widget.task_choice.itemText(i) for i in range(widget.task_choice.count())] == ["folder"]
    assert widget.mag_choice.isHidden() and widget.synthetic_notice.isHidden()
    assert widget.train_button.isEnabled()
    assert widget.name_edit.text() == "amil-colours"
    assert Path(widget.output_edit.text()).parent.name == "runs"
    config = widget.build_config()
    assert config["data"] == {"type": "folder", "root": str(tiny_dataset), "task": "folder"}
    assert config["model_kwargs"]["patch_size"] == 28

    # the split the run will use, and a warning where it is too small to mean anything
    assert (
        "Split by image (no patient ids; 0.7/0.15/0.15, seed 0): 12 training, 2 "
        "validation, 2 test images" in widget.checks.text()
    )
    assert "Warning: validation split too small: 1 of pink, 1 of purple" in widget.checks.text()
    assert len(widget.split_warnings) == 2 and widget.train_button.isEnabled()  # warns only

    # the recipe for the model and the data (histoview.training.recipes, test_recipes.py) sets
    # the starting values and says where they come from: a class-folder tree is real data,
    # so the papers' settings, not a recipe tuned on phantoms
    assert "built-in defaults, A-MIL" in widget.recipe_label.text()
    assert (widget.epochs.value(), widget.batch_size.value()) == (20, 1)
    widget.model_choice.setCurrentText("resnet18")
    assert (widget.batch_size.value(), widget.lr.value()) == (32, pytest.approx(1e-4))
    assert "built-in defaults" in widget.recipe_label.text()
    widget.model_choice.setCurrentText("rsf-attention")
    assert (widget.epochs.value(), widget.batch_size.value()) == (100, 8)
    assert "sparse sigmoid attention gates" in widget.recipe_label.text()
    assert fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"

    # errors are shown in the widget, never raised
    widget.set_dataset_folder(tmp_path / "missing")
    assert "not found" in widget.summary.text() and not widget.train_button.isEnabled()
    empty = tmp_path / "one-class"
    (empty / "only").mkdir(parents=True)
    widget.set_dataset_folder(empty)
    assert "one class folder only (only)" in widget.summary.text()
    assert "at least two classes" in widget.summary.text()

    # synthetic phantoms say the result is synthetic
    widget.source_choice.setCurrentText("synthetic phantoms")
    assert not widget.synthetic_notice.isHidden()
    assert "synthetic phantoms" in widget.summary.text()
    assert widget.task_choice.currentText() == "binary"
    assert "recipe training/rsf-attention-phantom.yaml" in widget.recipe_label.text()
    widget.task_choice.setCurrentText("in_situ_vs_invasive")  # that task has its own recipe
    assert "rsf-attention-phantom-in-situ-vs-invasive.yaml" in widget.recipe_label.text()


def test_train_cancel_resume_then_explain(make_napari_viewer, qtbot, tiny_dataset, monkeypatch):
    import histoview.training.engine as engine
    from histoview.models.checkpoint import read_metadata
    from histoview.models.library import list_checkpoints
    from histoview.viewer._explain_widget import ExplainWidget

    # Hold the worker at the end of epoch 2 until Cancel was pressed, so the test does not
    # depend on how fast the machine trains (epoch 1's event reaches the UI first).
    cancelled = threading.Event()
    original = engine.save_train_state
    calls = []

    def gated(path, optimizer, info):
        calls.append(info["epoch"])
        if info["epoch"] >= 2:
            cancelled.wait(60)
        return original(path, optimizer, info)

    monkeypatch.setattr(engine, "save_train_state", gated)

    viewer = make_napari_viewer()
    explain = ExplainWidget(viewer, "amil")
    before = _names(explain)
    widget = _amil_widget(viewer, tiny_dataset)
    out = Path(widget.output_edit.text())
    widget.train_button.click()
    assert widget._worker is not None and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: any(e["event"] == "epoch_end" for e in widget.events), timeout=60_000)
    view = widget.run_view
    assert view.progress.value() >= widget._steps and view.progress.maximum() == 3 * widget._steps
    assert "elapsed" in view.time_label.text() and "remaining about" in view.time_label.text()
    assert view.curves.steps and view.curves.epochs  # the live curves have data
    assert view._pbar is not None  # napari's activity dock shows the run too
    widget.cancel_button.click()
    cancelled.set()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert widget.last_result["cancelled"]
    assert "Cancelled" in widget.status.text() and "Resume" in widget.status.text()
    assert read_metadata(out / "last.safetensors")["epoch"] >= 1
    assert widget.resume_button.isEnabled()
    assert _names(explain) == before  # nothing added to the library yet

    # resume finishes every epoch, shows metrics and the confusion matrix, fills the library
    monkeypatch.setattr(engine, "save_train_state", original)
    widget.resume_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert any(e["event"] == "resumed" for e in widget.events)
    assert widget.last_result.get("report") is not None, widget.status.text()
    assert view.progress.value() == view.progress.maximum()
    assert [h["epoch"] for h in widget.last_result["history"]] == [1, 2, 3]
    assert "Validation" in view.results.text() and "balanced accuracy" in view.results.text()
    assert "Test" in view.results.text()
    assert view.cm_figure is not None and view._cm_box.count() == 1  # the confusion matrix
    assert len(view.curves.epochs) == 3  # the resumed run's curves include the earlier epochs
    name = widget.library_path.stem
    assert name == "amil-colours" and widget.library_path.exists()
    assert name in [e.name for e in list_checkpoints(model="amil")]
    assert name in _names(explain)  # listed without restarting napari
    assert "model library" in widget.status.text()

    # the finished model is evaluated on its test split as `histoview evaluate` does
    evaluation = widget.evaluation
    qtbot.waitUntil(lambda: not evaluation.running, timeout=60_000)
    result = evaluation.last_result
    assert result is not None, evaluation.status.text()
    assert result["split"] == "test" and result["data"]["evaluated"] == result["overall"]["n"]
    assert set(evaluation.canvases) == {"confusion_matrix", "roc", "pr"}
    _assert_curves(evaluation)
    assert evaluation.table.rowCount() == 3  # pink, purple, overall
    folder = out / "evaluation"
    assert {f.name for f in folder.iterdir()} >= {
        "metrics.json",
        "metrics.csv",
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
        "predictions.csv",
    }
    assert all(Path(f).parent == folder for f in result["files"].values())

    # the explanation widget explains an image with the new model
    rng = np.random.default_rng(1)
    image = viewer.add_image(_noise_image(COLOURS["purple"], rng), rgb=True, name="purple sample")
    explain.image_choice.value = image
    explain.model_choice.value = next(e for e in explain.model_choice.choices if e.name == name)
    explain.run()
    # busy until the overlay is in: the worker ends first, then its layers go in stepwise
    qtbot.waitUntil(lambda: not explain.busy, timeout=60_000)
    assert explain.last_explanation is not None, explain.result.value
    assert set(explain.last_explanation.classes) == {"pink", "purple"}


def test_library_rename_delete_export(make_napari_viewer, tmp_path, monkeypatch):
    from histoview.models.library import LibraryEntry
    from histoview.viewer._explain_widget import ExplainWidget
    from histoview.viewer._train_widget import TrainWidget

    _library_checkpoint("colours-amil")
    viewer = make_napari_viewer()
    explain = ExplainWidget(viewer, "amil")
    assert "colours-amil" in _names(explain)
    widget = TrainWidget(viewer)
    panel = widget.library
    assert panel.select("colours-amil")
    assert "pink, purple" in panel.details.text()

    monkeypatch.setattr(panel, "_ask_text", lambda *a: "renamed-amil")
    panel.rename_button.click()
    assert "renamed-amil" in _names(explain) and "colours-amil" not in _names(explain)
    assert panel.selected().name == "renamed-amil"

    target = tmp_path / "exported"
    target.mkdir()
    monkeypatch.setattr(panel, "_ask_folder", lambda *a: str(target))
    first = panel.export_selected()
    second = panel.export_selected()  # never overwrites the first copy
    assert first.name == "renamed-amil.safetensors" and second.name == "renamed-amil-1.safetensors"
    assert first.with_suffix(".json").exists() and second.with_suffix(".json").exists()

    monkeypatch.setattr(panel, "_confirm", lambda *a: False)
    panel.delete_button.click()
    assert "renamed-amil" in _names(explain) and "Nothing deleted" in panel.status.text()
    monkeypatch.setattr(panel, "_confirm", lambda *a: True)
    panel.delete_button.click()
    assert "renamed-amil" not in _names(explain) and "renamed-amil" not in [
        e.name for e in panel.entries
    ]

    bundled = LibraryEntry("demo", tmp_path / "demo.safetensors", {"model": "amil"}, "bundled")
    monkeypatch.setattr(panel, "selected", lambda: bundled)
    panel.delete_selected()
    assert "cannot be deleted" in panel.status.text()


def _assert_curves(evaluation):
    """The ROC and PR canvases draw figures whose curves hold data."""
    for key in ("roc", "pr"):
        fig = evaluation.figures[key]
        assert evaluation.canvases[key].figure is fig
        ax = fig.axes[0]
        assert any(len(line.get_xdata()) > 1 for line in ax.lines if line.get_label() != "chance")
    assert len(evaluation.figures["confusion_matrix"].axes) >= 2  # counts and row-normalised


def test_evaluate_library_checkpoint(make_napari_viewer, qtbot, tiny_dataset, tmp_path):
    from histoview.viewer._train_widget import TrainWidget

    _library_checkpoint("colours-amil")
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    panel, evaluation = widget.library, widget.evaluation
    assert panel.select("colours-amil")
    panel.evaluate_button.click()  # no dataset chosen yet: says so, runs nothing
    assert "dataset" in panel.status.text() and not evaluation.running

    widget.set_dataset_folder(tiny_dataset)
    widget.device_choice.setCurrentText("cpu")
    widget.output_edit.setText(str(tmp_path / "run"))
    for i in range(2):
        panel.evaluate_button.click()
        assert evaluation.running and widget.tabs.currentWidget() is widget._eval_page
        qtbot.waitUntil(lambda: not evaluation.running, timeout=60_000)
        result = evaluation.last_result
        assert result is not None, evaluation.status.text()
        # trained elsewhere (no recorded split): every image of the chosen dataset
        assert result["split"] == "all" and result["overall"]["n"] == 16
        _assert_curves(evaluation)
        assert evaluation.table.rowCount() == 3
        assert evaluation.table.item(2, 1).text() == "16"
        name = "metrics.json" if i == 0 else "metrics-1.json"  # never overwritten
        assert (
            Path(result["files"]["metrics_json"])
            == tmp_path / "run" / "evaluation-colours-amil" / name
        )

    # a dataset whose classes differ: the error is shown, not raised
    other = tmp_path / "other"
    for cls in ("a", "b"):
        (other / cls).mkdir(parents=True)
        (other / cls / "x.png").write_bytes((tiny_dataset / "pink" / "pink_0.png").read_bytes())
    widget.set_dataset_folder(other)
    panel.evaluate_button.click()
    qtbot.waitUntil(lambda: not evaluation.running, timeout=60_000)
    assert evaluation.last_result is None and "differ" in evaluation.status.text()
    assert "Error" in widget.status.text()


def test_widget_from_plugin_menu(make_napari_viewer):
    from histoview.viewer._train_widget import TrainWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Train a model")
    assert isinstance(widget, TrainWidget)
    assert [widget.tabs.tabText(i) for i in range(widget.tabs.count())] == [
        "Settings",
        "Run",
        "Model library",
        "Evaluation",
    ]
    # before any dataset, the model's own values (not the spin boxes' minimums)
    assert "Starting values: recipe training/amil-phantom.yaml" in widget.recipe_label.text()
    assert widget.lr.value() == pytest.approx(5e-4) and not widget.train_button.isEnabled()


def _breakhis_folder(root: Path, groups=("B", "M"), patients=3, per_patient=4) -> Path:
    """BreakHis-named PNGs (``SOB_<B|M>_<subtype>-<year>-<slide>-<mag>-<seq>.png``)."""
    from skimage.io import imsave

    rng = np.random.default_rng(2)
    for g, colour in zip(groups, COLOURS.values()):
        sub = "A" if g == "B" else "DC"
        for k in range(patients):
            for mag in (40, 100):
                for i in range(per_patient):
                    name = f"SOB_{g}_{sub}-14-{1000 * (g == 'M') + k}-{mag}-{i:03d}.png"
                    path = root / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    imsave(path, _noise_image(colour, rng, (24, 36)), check_contrast=False)
    return root


def test_breakhis_recipe_and_one_class_refusal(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("histoview", "Train a model")
    widget.set_dataset_folder(_breakhis_folder(tmp_path / "breakhis"))
    assert "Layout: BreakHis" in widget.summary.text() and not widget.mag_choice.isHidden()
    # BreakHis data starts from the BreakHis recipe (its split too), not the phantom one
    assert "recipe training/amil-breakhis.yaml" in widget.recipe_label.text()
    assert widget.build_config()["split"]["fractions"] == [0.6, 0.2, 0.2]
    assert "Split by patient (0.6/0.2/0.2" in widget.checks.text()
    widget.epochs.setValue(7)
    widget.mag_choice.setCurrentText("100")  # the same recipe: the user's values stay
    assert widget.epochs.value() == 7 and "at 100X" not in widget.summary.text()
    widget.model_choice.setCurrentText("customnet")  # no BreakHis recipe: the paper's values
    assert "built-in defaults, customNet (Patil et al., 2019, Table III)" in (
        widget.recipe_label.text()
    )
    assert (widget.epochs.value(), widget.batch_size.value()) == (20, 16)

    # a folder of benign BreakHis images only (12 at 100X) has one class: refused, saying why
    widget.set_dataset_folder(_breakhis_folder(tmp_path / "benign", groups=("B",)))
    assert "Layout: BreakHis" in widget.summary.text()  # what was found is still shown
    text = widget.checks.text()
    assert text.startswith("Cannot train on this data: images of 1 class only") and (
        "benign: 12, malignant: 0" in text and "at least two classes" in text
    )
    assert not widget.train_button.isEnabled()
    widget.train()  # even if called directly: nothing starts
    assert widget._worker is None and "at least two classes" in widget.status.text()
    # two classes again: the refusal about the other folder does not linger above the tabs
    widget.set_dataset_folder(_breakhis_folder(tmp_path / "both"))
    assert widget.train_button.isEnabled() and "Error" not in widget.status.text()


def test_user_path_from_the_plugin_menu(make_napari_viewer, qtbot, tiny_dataset, tmp_path):
    """Open the dock from the menu, nothing preset: a one-class folder is refused; a small
    two-class folder trains with the defaults (1 epoch), warns about its small splits before
    and after, and the model lands in the library and in the explanation dock."""
    from histoview.models.library import list_checkpoints

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 860)
    rng = np.random.default_rng(3)
    viewer.add_image(_noise_image(COLOURS["pink"], rng, (460, 700)), rgb=True, name="tissue")
    _, explain = viewer.window.add_plugin_dock_widget("histoview", "Attention-MIL")
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Train a model")
    assert not widget.train_button.isEnabled()

    one = tmp_path / "one-class" / "tumour"
    one.mkdir(parents=True)
    (one / "a.png").write_bytes((tiny_dataset / "pink" / "pink_0.png").read_bytes())
    widget.folder_edit.setText(str(one.parent))
    widget.folder_edit.editingFinished.emit()  # what typing a path and pressing Enter does
    assert "at least two classes" in widget.summary.text()
    assert widget.summary.styleSheet() == "color: #e05050" and not widget.train_button.isEnabled()

    widget.folder_edit.setText(str(tiny_dataset))
    widget.folder_edit.editingFinished.emit()
    assert widget.train_button.isEnabled()
    before = widget.checks.text()
    assert "Warning: test split too small: 1 of pink, 1 of purple" in before
    assert widget.checks.isVisible() or not widget.isVisible()
    widget.epochs.setValue(1)  # the only change: keep the test short
    widget.train_button.click()
    assert widget.tabs.currentWidget() is widget._run_page  # the curves, while it runs
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.last_result and widget.last_result.get("report"), widget.status.text()
    view = widget.run_view
    assert [w.split(":")[0] for w in view.warnings] == [
        "validation split too small",
        "test split too small",
    ]
    assert "Warning: test split too small: 1 of pink, 1 of purple" in view.warning_label.text()
    assert "2 warnings about the split" in widget.status.text()
    name = widget.library_path.stem
    assert name == "amil-colours" and name in [e.name for e in list_checkpoints(model="amil")]
    assert name in _names(explain)
    # the confusion matrix is never drawn smaller than its own size (labels would overlap)
    canvas = view._cm_box.itemAt(0).widget()
    w, h = view.cm_figure.get_size_inches() * view.cm_figure.dpi
    assert canvas.minimumWidth() >= round(w) - 1 and canvas.minimumHeight() >= round(h) - 1
    qtbot.waitUntil(lambda: not widget.evaluation.running, timeout=60_000)
    assert "Warning: under 5 images of a class (pink: 1, purple: 1)" in (
        widget.evaluation.summary.text()
    )

    # beside the explanation dock (the two share the right side): the buttons, progress and
    # status stay in view above the tabs; the Run tab shows the curves at its top
    _assert_in_view(widget.train_button, widget.run_view.progress, widget.status)
    assert widget.tabs.currentWidget() is widget._run_page
    _assert_in_view(widget.run_view.curves.canvas)
    assert widget.height() < 700  # it really shares the side with the explanation dock
    for tab in ("Run", "Settings"):
        widget.tabs.setCurrentIndex([widget.tabs.tabText(i) for i in range(4)].index(tab))
        qtbot.wait(50)
        path = viewer.screenshot(str(tmp_path / f"train-dock-{tab.lower()}.png"), canvas_only=False)
        assert path.shape[0] >= 800 and path.shape[1] >= 1300  # the whole window
    _assert_in_view(widget.checks)  # the split warning, in the Settings tab's first screen
    widget.tabs.setCurrentWidget(widget._run_page)
    widget._run_page.ensureWidgetVisible(canvas)  # scrolled down to the confusion matrix
    qtbot.wait(50)
    _assert_in_view(canvas)
    viewer.screenshot(str(tmp_path / "train-dock-matrix.png"), canvas_only=False)


def _assert_in_view(*widgets):
    """Each widget is shown and not scrolled or clipped out of sight."""
    for w in widgets:
        assert w.isVisible() and not w.visibleRegion().isEmpty(), w


def test_confusion_matrix_fits_a_narrow_dock(qtbot):
    from histoview.training.datasets import BREAKHIS_SUBTYPE_NAMES
    from histoview.viewer._train_run_view import RunView

    classes = list(BREAKHIS_SUBTYPE_NAMES.values())
    cm = np.random.default_rng(0).integers(0, 9, (8, 8)).tolist()
    report = {
        "best_epoch": 3,
        "test": {"n": 40, "confusion_matrix": cm, "classes": classes},
        "warnings": ["test split too small: 2 of adenosis"],
    }
    for width, stacked in ((360, True), (1400, False)):
        view = RunView()
        qtbot.addWidget(view)
        view.resize(width, 600)
        view.show_report(report, "")
        panels = [ax for ax in view.cm_figure.axes if ax.get_title()]
        (x0, y0), (x1, y1) = (ax.get_position().p0 for ax in panels)
        assert (y1 < y0 and x1 == pytest.approx(x0, abs=0.05)) if stacked else (x1 > x0)
        assert "Warning: test split too small: 2 of adenosis." in view.warning_label.text()


def test_stain_options_from_the_plugin_menu(make_napari_viewer, qtbot, tiny_dataset, tmp_path):
    """Open the dock from the menu, nothing preset: no stain option is on and the config has
    no ``stain``/``augment`` section (the run as before); Reinhard fitted on the training split
    with HED jitter trains, and the checkpoint's sidecar holds the fitted normaliser."""
    from histoview.models.checkpoint import read_metadata
    from histoview.preprocessing.stain import StainNormaliser

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("histoview", "Train a model")
    stain = widget.stain_options
    assert stain.method_choice.currentText() == "none" and not stain.jitter_check.isChecked()
    assert stain.reference_choice.isHidden() and stain.reference_edit.isHidden()
    widget.set_dataset_folder(tiny_dataset)
    config = widget.build_config()
    assert "stain" not in config and "augment" not in config  # today's run, unchanged

    # an image-file reference must be chosen and exist; the error is shown, nothing runs
    stain.method_choice.setCurrentText("Macenko")
    stain.reference_choice.setCurrentText("an image file")
    assert not stain.reference_edit.isHidden()
    widget.train()
    assert widget._worker is None and "choose a reference image file" in widget.status.text()
    stain.reference_edit.setText(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="missing.png not found"):
        widget.build_config()
    ref = tiny_dataset / "purple" / "purple_0.png"
    stain.set_reference_file(ref)
    assert widget.build_config()["stain"] == {
        "method": "macenko",
        "reference": str(ref.resolve()),
        "on_no_tissue": "keep",
    }

    # nuclei-graph models take no HED jitter (the core refuses it): the box says so
    stain.jitter_check.setChecked(True)
    widget.model_choice.setCurrentText("rsf-attention")
    assert not stain.jitter_check.isChecked() and not stain.jitter_check.isEnabled()
    assert "not nuclei graphs" in stain.note.text() and "augment" not in widget.build_config()

    # Reinhard on the training split, HED jitter 0.1: trained, stored in the sidecar
    widget.model_choice.setCurrentText("amil")
    stain.method_choice.setCurrentText("Reinhard")
    stain.reference_choice.setCurrentText("fit on the training split")
    stain.jitter_check.setChecked(True)
    stain.jitter_strength.setValue(0.1)
    config = widget.build_config()
    assert config["stain"]["reference"] == "training-set"
    assert config["augment"] == {"hed_jitter": 0.1}
    widget.epochs.setValue(1)
    widget.batch_size.setValue(4)
    widget.device_choice.setCurrentText("cpu")
    widget.train_button.click()
    assert not stain.isEnabled()  # fixed while the run goes
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.last_result and widget.last_result.get("report"), widget.status.text()
    assert any("reinhard stain normalisation fitted on" in e.get("text", "") for e in widget.events)
    meta = read_metadata(widget.last_result["checkpoint"])
    norm = StainNormaliser.from_dict(meta["stain_normalisation"])
    assert norm.method == "reinhard" and norm.on_no_tissue == "keep"
    assert norm.fitted_on["images"] == 12  # the training split's 12 images, not all 16
    assert meta["input"]["hed_jitter"] == 0.1
    # the library tab says so too
    widget.library.select(widget.library_path.stem)
    assert "stain: reinhard stain normalisation fitted on 12 images" in (
        widget.library.details.text()
    )
    assert "HED jitter 0.1 in training" in widget.library.details.text()
    qtbot.waitUntil(lambda: not widget.evaluation.running, timeout=60_000)  # its test split


def test_a_split_without_some_classes_says_so(qtbot):
    """A validation split with only benign images: its balanced accuracy is benign's recall
    and ROC AUC cannot be computed; the dock says which class is missing and "undefined",
    not a bare 0.000 or "nan"."""
    from histoview.training.metrics import classification_metrics
    from histoview.viewer._train_run_view import RunView
    from histoview.viewer._train_widget_parts import metrics_text

    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])  # all benign, all called malignant
    val = classification_metrics(np.zeros(3, int), probs, class_names=["benign", "malignant"])
    text = metrics_text("Validation", val)
    assert "balanced accuracy 0.000" in text and "ROC AUC undefined" in text
    assert "no malignant images in this split" in text and " nan" not in text
    both = classification_metrics(np.array([0, 1, 1]), probs, class_names=["b", "m"])
    assert "no " not in metrics_text("Validation", both)
    view = RunView()
    qtbot.addWidget(view)
    view.epoch_end({"epoch": 1, "epochs": 2, "train_loss": 0.5, "val_metrics": val})
    assert "(no malignant in validation)" in view.status.text()
