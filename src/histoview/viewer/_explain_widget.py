"""The explanation dock widget: run a method on the selected image layer, off the UI thread.

One widget class serves every method (A-MIL attention, nuclei-graph
importance, Grad-CAM / DT Grad-CAM / Grad-CAM++, RMCG); the plugin menu
offers it pre-set per method. The model list shows the user's model library
and the bundled synthetic demo weights, and is refreshed whenever a new model
is trained (see :func:`refresh_all`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import get_method, list_methods, method_title
from histoview.viewer._compat import avoid_triton_llvm_clash
from histoview.viewer._layer_choice import is_tissue_image, layer_choice
from histoview.viewer.overlays import (
    add_explanation_layers,
    explanation_title,
    layer_pixel_size,
    read_layer_for_model,
)

if TYPE_CHECKING:
    import napari

_LIVE: weakref.WeakSet = weakref.WeakSet()


def refresh_all() -> None:
    """Refresh the model list of every open explanation widget (after training or library edits)."""
    for w in list(_LIVE):
        w.refresh_models()


class ExplainWidget(Container):
    """Dock widget: image layer, method, model, target class, run/cancel, progress, result."""

    def __init__(self, viewer, method: str | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._worker = None
        self.last_explanation = None
        self.last_layers: list = []
        from napari.layers import Image

        # napari lists the viewer's Image layers (explanation overlays left out) and keeps the
        # list current while the widget is docked
        self.image_choice = layer_choice(Image, is_tissue_image, label="image")
        self.method_choice = ComboBox(label="method", choices=list_methods(), value=method or "amil")
        self.model_choice = ComboBox(label="model", choices=[])
        self.class_choice = ComboBox(label="explain class", choices=["predicted"], value="predicted")
        importance = get_method("graph").options["importance"]
        self.importance_choice = ComboBox(label="importance", choices=list(importance),
                                          value=importance[0])
        self.outlines = CheckBox(label="outlines", value=False)
        self.run_button = PushButton(text="Explain")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=4, value=0)
        self.result = Label(label="result", value="")
        self.notice = Label(value=RESEARCH_NOTICE)
        self.extend([self.image_choice, self.method_choice, self.model_choice, self.class_choice,
                     self.importance_choice, self.outlines, self.run_button, self.cancel_button,
                     self.progress, self.result, self.notice])
        self.method_choice.changed.connect(self._method_changed)
        self.model_choice.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        # the image list also follows the layers when the widget is not docked (scripts, tests)
        viewer.layers.events.inserted.connect(self.image_choice.reset_choices)
        viewer.layers.events.removed.connect(self.image_choice.reset_choices)
        self._method_changed()
        _LIVE.add(self)

    # -- choices ----------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        from histoview.models.library import list_checkpoints
        from histoview.models.registry import get_model_config

        spec = get_method(self.method_choice.value)
        entries = [e for e in list_checkpoints(kind=spec.kind) if spec.accepts(get_model_config(e.model))]
        current = self.model_choice.value
        self.model_choice.choices = [(e.label(), e) for e in entries]
        for e in entries:
            if current is not None and e.path == getattr(current, "path", None):
                self.model_choice.value = e

    def _method_changed(self, _event=None):
        method = self.method_choice.value
        self.importance_choice.visible = "importance" in get_method(method).options
        self.outlines.visible = get_method(method).kind == "graph"
        self.run_button.text = f"Explain with {method_title(method)}"
        self.refresh_models()
        self._model_changed()

    def _model_changed(self, _event=None):
        entry = self.model_choice.value
        classes = list(entry.meta.get("classes", [])) if entry is not None else []
        self.class_choice.choices = ["predicted", *classes]
        self.class_choice.value = "predicted"
        self.class_choice.visible = get_method(self.method_choice.value).class_specific

    # -- running ----------------------------------------------------------------------------------
    def _work(self, image_layer, method, entry, target_class, importance):
        """Generator run in a worker thread: yields (step, text), returns the explanation."""
        from histoview.explain.run import explain_array, load_for_method

        yield 1, "loading model"
        net, meta, sha = load_for_method(method, checkpoint=entry.path)
        yield 2, "reading image"
        mpp = layer_pixel_size(image_layer)
        rgb, downsample, level, shape0 = read_layer_for_model(image_layer.data, image_layer.multiscale, mpp, meta)
        yield 3, f"running {method_title(method)} on {rgb.shape[1]} x {rgb.shape[0]} pixels"
        expl = explain_array(rgb, method, net, meta, sha, pixel_size_um=(mpp * downsample) if mpp else None,
                             target_class=target_class, importance=importance, downsample=downsample,
                             level=level, image_shape=shape0)
        yield 4, "done"
        return expl, downsample

    def run(self, _event=None):
        from napari.qt.threading import create_worker

        image_layer = self.image_choice.value
        entry = self.model_choice.value
        if image_layer is None:
            self._report_error("select an image layer first")
            return
        if entry is None:
            self._report_error(f"no model available for {self.method_choice.value}: train one or add a checkpoint")
            return
        method = self.method_choice.value
        tc = None if self.class_choice.value == "predicted" else self.class_choice.value
        imp = None if self.importance_choice.value == "auto" else self.importance_choice.value
        avoid_triton_llvm_clash()
        worker = create_worker(self._work, image_layer, method, entry, tc, imp, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(image_layer, result))
        worker.errored.connect(lambda exc: self._report_error(str(exc)))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.result.value = "running..."
        worker.start()

    def cancel(self, _event=None):
        if self._worker is not None:
            self._worker.quit()
            self.result.value = "cancelled"

    def _on_progress(self, item):
        step, text = item
        self.progress.value = step
        self.result.value = text

    def _on_done(self, image_layer, result):
        expl, _ = result
        self.last_explanation = expl
        layers = add_explanation_layers(self.viewer, image_layer, expl, outlines=bool(self.outlines.value))
        self.last_layers = layers
        from histoview.viewer.overlays import _set_notice

        _set_notice(self.viewer, [lay for lay in self.viewer.layers if "histoview_explanation" in lay.metadata])
        probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(expl.classes, expl.probabilities))
        self.result.value = f"{explanation_title(expl)}\n{probs}" + ("\nsynthetic demo weights" if expl.synthetic else "")

    def _on_finished(self):
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _report_error(self, message: str):
        from napari.utils.notifications import show_error

        self.result.value = f"error: {message}"
        show_error(f"histoview: {message}")


# napari passes the viewer to a dock widget's __init__ parameter annotated as a Viewer.
class AmilWidget(ExplainWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, "amil")


class GraphWidget(ExplainWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, "graph")


class GradCamWidget(ExplainWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, "gradcam")


class AllMethodsWidget(ExplainWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, None)
