"""The training dock in a real napari viewer: dataset summary, train, cancel, resume, library."""

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
    save_checkpoint(src, create_model("amil"), {"model": "amil", "classes": ["pink", "purple"],
                                                "model_kwargs": {"patch_size": 28},
                                                "data": {"layout": "folder", "images": 16}})
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

    # the model's recipe (histoview.training.recipes, tested in test_recipes.py) sets the
    # starting values and says where they come from
    widget.model_choice.setCurrentText("resnet18")
    assert (widget.batch_size.value(), widget.lr.value()) == (32, pytest.approx(1e-4))
    assert "built-in defaults" in widget.recipe_label.text()
    widget.model_choice.setCurrentText("rsf-attention")
    assert (widget.epochs.value(), widget.batch_size.value()) == (30, 8)
    assert "recipe training/rsf-attention-phantom.yaml" in widget.recipe_label.text()
    assert fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"

    # errors are shown in the widget, never raised
    widget.set_dataset_folder(tmp_path / "missing")
    assert "not found" in widget.summary.text() and not widget.train_button.isEnabled()
    empty = tmp_path / "one-class"
    (empty / "only").mkdir(parents=True)
    widget.set_dataset_folder(empty)
    assert "cannot recognise" in widget.summary.text()

    # synthetic phantoms say the result is synthetic
    widget.source_choice.setCurrentText("synthetic phantoms")
    assert not widget.synthetic_notice.isHidden()
    assert "synthetic phantoms" in widget.summary.text()
    assert widget.task_choice.currentText() == "binary"


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
    assert {f.name for f in folder.iterdir()} >= {"metrics.json", "metrics.csv", "confusion_matrix.png",
                                                  "roc.png", "pr.png", "predictions.csv"}
    assert all(Path(f).parent == folder for f in result["files"].values())

    # the explanation widget explains an image with the new model
    rng = np.random.default_rng(1)
    image = viewer.add_image(_noise_image(COLOURS["purple"], rng), rgb=True, name="purple sample")
    explain.image_choice.value = image
    explain.model_choice.value = next(e for e in explain.model_choice.choices if e.name == name)
    explain.run()
    qtbot.waitUntil(lambda: explain._worker is None, timeout=60_000)
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
        e.name for e in panel.entries]

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
        assert evaluation.running and widget.tabs.currentIndex() == 2
        qtbot.waitUntil(lambda: not evaluation.running, timeout=60_000)
        result = evaluation.last_result
        assert result is not None, evaluation.status.text()
        # trained elsewhere (no recorded split): every image of the chosen dataset
        assert result["split"] == "all" and result["overall"]["n"] == 16
        _assert_curves(evaluation)
        assert evaluation.table.rowCount() == 3
        assert evaluation.table.item(2, 1).text() == "16"
        name = "metrics.json" if i == 0 else "metrics-1.json"  # never overwritten
        assert Path(result["files"]["metrics_json"]) == tmp_path / "run" / "evaluation-colours-amil" / name

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
    assert widget.tabs.count() == 3
