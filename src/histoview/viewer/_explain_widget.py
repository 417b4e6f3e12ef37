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

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import get_method, list_methods, method_title
from histoview.viewer._calibration import follow_base, set_pixel_size
from histoview.viewer._compat import avoid_triton_llvm_clash
from histoview.viewer._explain_running import explain_work, no_model
from histoview.viewer._layer_choice import follow_layers, is_tissue_image, layer_choice
from histoview.viewer._layer_updates import show_overlay
from histoview.viewer._widgets import DockContainer, compact, wrapping
from histoview.viewer.overlays import explanation_title, layer_pixel_size

if TYPE_CHECKING:
    import napari

_LIVE: weakref.WeakSet = weakref.WeakSet()


def refresh_all() -> None:
    """Refresh the model list of every open explanation widget (after training or library edits)."""
    for w in list(_LIVE):
        try:
            w.refresh_models()
        except RuntimeError:  # its Qt widget is gone (viewer closed)
            _LIVE.discard(w)


#: milliseconds after a dock opens before the first model list of a session is read
LIST_AFTER_MS = 100


#: what the synthetic demo weights say on an image that is not a phantom
DEMO_WEIGHTS_WARNING = (
    "Synthetic demo weights on a real image: they were trained on generated phantoms, so "
    "this prediction and map mean nothing here. Train a model on your data (Plugins > "
    "histoview > Train a model) or choose one from your library."
)


def _on_main_thread(function):
    """``function`` called on the Qt main thread, from whichever thread calls the result."""
    from superqt.utils import ensure_main_thread

    return ensure_main_thread(function)


def _is_phantom(layer) -> bool:
    return (layer.metadata.get("histoview") or {}).get("source") == "phantom"


class ExplainWidget(DockContainer):
    """Dock widget: image layer, method, model, pixel size, target class, run/cancel, result.

    Opened from the Plugins menu with nothing preset it explains the selected image with the
    newest model of the library that fits the method, or the method's bundled demo weights;
    the model list follows the library and keeps the user's choice when layers or models
    are added. The work (model, image, method, the overlay's layer data) runs in a worker
    thread; the main thread only adds the ready layers. Cancel stops between steps and adds
    nothing.
    """

    def __init__(self, viewer, method: str | None = None):
        super().__init__(labels=True)
        self.viewer = viewer
        self._all_methods = method is None  # the "Explain (all methods)" dock
        self._worker = None
        self._cancelled = False
        self._adding = False
        self.last_explanation = None
        self.last_layers: list = []
        from napari.layers import Image

        # napari lists the viewer's Image layers (explanation overlays left out) and keeps the
        # list current while the widget is docked
        self.image_choice = layer_choice(Image, is_tissue_image, label="image")
        self.method_choice = ComboBox(
            label="method",
            choices=[(method_title(m), m) for m in list_methods()],  # by title, valued by id
            value=method or "amil",
        )
        # a function, so that every reset (napari calls it when layers change) re-reads the
        # library and keeps the current choice when it is still there
        self.model_choice = ComboBox(label="model", choices=self._model_choices)
        self.pixel_size = FloatSpinBox(
            label="pixel size (µm/px)",
            min=0.0,
            max=20.0,
            step=0.01,
            value=0.0,
            tooltip="Micrometres per pixel of the image. 0: use the file's calibration, or "
            "estimate it from the nuclei when the file has none. A value you enter is "
            "remembered for this layer and puts it, with its overlays, in micrometres.",
        )
        self.pixel_size_info = Label(value="")
        self.class_choice = ComboBox(
            label="explain class", choices=self._class_choices, value="predicted"
        )
        importance = get_method("graph").options["importance"]
        self.importance_choice = ComboBox(
            label="importance", choices=list(importance), value=importance[0]
        )
        self.outlines = CheckBox(label="outlines", value=False)
        self.run_button = PushButton(text="Explain")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=5, value=0)
        self.result = Label(label="result", value="")
        self.warning = Label(value="")
        wrapping(self.result, self.warning)  # a long line must not widen the dock
        compact(self.image_choice, self.model_choice)
        self.warning.native.setStyleSheet("color: #ffb000; font-weight: bold")
        self.notice = Label(value=RESEARCH_NOTICE)
        self.extend(
            [
                self.image_choice,
                self.method_choice,
                self.model_choice,
                self.pixel_size,
                self.pixel_size_info,
                self.class_choice,
                self.importance_choice,
                self.outlines,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.result,
                self.warning,
                self.notice,
            ]
        )
        self.method_choice.changed.connect(self._method_changed)
        self.model_choice.changed.connect(self._model_changed)
        self.image_choice.changed.connect(self._image_changed)
        self.pixel_size.changed.connect(self._pixel_size_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        # the image list also follows the layers when the widget is not docked (scripts, tests)
        follow_layers(viewer, self.image_choice)
        self._method_changed()
        self._image_changed()
        self.model_choice.changed.connect(self._warm_up)
        self._warm_up()
        _LIVE.add(self)
        from histoview.viewer._pathology_view import SHORTCUTS, install

        install(viewer, self)
        self.notice.tooltip = "Shortcuts: " + "; ".join(f"{k}: {v}" for k, v in SHORTCUTS.items())

    # -- choices ----------------------------------------------------------------------------------
    def _model_choices(self, _widget=None) -> list:
        """(label, entry) of every checkpoint the method can use: user library, then bundled.
        Empty while the first list of the session is read in the background (_listed)."""
        from histoview.viewer._models import checkpoint_entries, listing_ready

        if not listing_ready():  # listing would import torch here, on the main thread
            return []
        return checkpoint_entries(self.method_choice.value)

    def _warm_up(self, _event=None) -> None:
        """Load the chosen model in the background (viewer._models.warm_up); while there is
        no list yet, read it there too and load its first model (the default)."""
        from histoview.viewer._models import FIRST_LISTED, listing_ready, warm_up

        entry, method = self.model_choice.value, self.method_choice.value
        if entry is not None:
            warm_up([(method, entry.path)])
        elif not listing_ready():
            from qtpy.QtCore import QTimer

            self.model_choice.native.setPlaceholderText("reading the model list...")
            # started once the dock is drawn: the thread's import of torch holds the GIL in
            # long stretches (its C++ extension's initialisation)
            QTimer.singleShot(
                LIST_AFTER_MS,
                lambda: warm_up([(method, FIRST_LISTED)], listed=_on_main_thread(self._listed)),
            )

    def _listed(self, _entries=None) -> None:
        """The background listing is done (main thread): fill the model box, keeping a
        choice made meanwhile."""
        try:
            if self.model_choice.value is None:
                self.model_choice.reset_choices()
                self._model_changed()
        except RuntimeError:  # the dock was closed meanwhile
            _LIVE.discard(self)

    def refresh_models(self) -> None:
        """Re-read the model library; the chosen model stays chosen while it exists."""
        current = self.model_choice.value
        self.model_choice.reset_choices()
        if current is not None:
            for _, entry in self._model_choices():
                if entry.path == current.path:
                    self.model_choice.value = entry
                    break

    def _method_changed(self, _event=None):
        method = self.method_choice.value
        self.importance_choice.visible = "importance" in get_method(method).options
        self.outlines.visible = get_method(method).kind == "graph"
        self.run_button.text = f"Explain with {method_title(method)}"
        self.run_button.tooltip = get_method(method).citation
        self.model_choice.reset_choices()
        self._model_changed()

    def _class_choices(self, _widget=None) -> list[str]:
        entry = getattr(self, "model_choice", None) and self.model_choice.value
        return ["predicted", *(entry.meta.get("classes", []) if entry else [])]

    def _model_changed(self, _event=None):
        self.class_choice.reset_choices()
        self.class_choice.visible = get_method(self.method_choice.value).class_specific
        self._update_warning()

    def _image_changed(self, _event=None):
        layer = self.image_choice.value
        info = (layer.metadata.get("histoview") or {}) if layer is not None else {}
        mpp, source = info.get("pixel_size_um"), info.get("pixel_size_source")
        with self.pixel_size.changed.blocked():
            self.pixel_size.value = float(mpp) if mpp and source == "user" else 0.0
        if layer is None:
            self.pixel_size_info.value = ""
        elif mpp:
            self.pixel_size_info.value = f"{mpp:.4g} µm/px ({source or 'file'})"
        else:
            self.pixel_size_info.value = "unknown: estimated from the nuclei when needed"
        self._update_warning()

    def _pixel_size_changed(self, _event=None):
        """A pixel size the user enters is remembered in the layer (0 forgets it)."""
        layer = self.image_choice.value
        if layer is None:
            return
        info = dict(layer.metadata.get("histoview") or {})
        value = float(self.pixel_size.value)
        if value > 0:
            info.setdefault("file_pixel_size_um", info.get("pixel_size_um"))
            info.setdefault("file_pixel_size_source", info.get("pixel_size_source"))
            info.update(pixel_size_um=value, pixel_size_source="user")
        elif info.get("pixel_size_source") == "user":
            info.update(
                pixel_size_um=info.pop("file_pixel_size_um", None),
                pixel_size_source=info.pop("file_pixel_size_source", None),
            )
        layer.metadata = {**layer.metadata, "histoview": info}
        set_pixel_size(self.viewer, layer, value or None)  # in µm, with what is drawn over it
        self._image_changed()

    def _update_warning(self) -> None:
        entry, layer = self.model_choice.value, self.image_choice.value
        demo_on_real = (
            entry is not None and entry.synthetic and layer is not None and not _is_phantom(layer)
        )
        self.warning.value = DEMO_WEIGHTS_WARNING if demo_on_real else ""
        self.warning.visible = bool(self.warning.value)

    # -- running ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A run is in progress (working, or still inserting its layers)."""
        return self._worker is not None or self._adding

    def run(self, _event=None):
        from napari.qt.threading import create_worker

        from histoview.viewer._cpu_share import torch_threads_per_step
        from histoview.viewer.overlays import Placement

        if self._worker is not None or self._adding:
            return
        from histoview.viewer._pathology_view import remember_dock

        remember_dock(self.viewer, self)
        image_layer = self.image_choice.value
        entry = self.model_choice.value
        if image_layer is None:
            self._report_error(
                "open an image first (File > Open, or File > Open Sample > histoview)"
            )
            return
        from histoview.viewer._models import listing_ready

        if entry is None and listing_ready():
            self._report_error(no_model(self.method_choice.value))
            return
        method = self.method_choice.value
        tc = None if self.class_choice.value == "predicted" else self.class_choice.value
        imp = None if self.importance_choice.value == "auto" else self.importance_choice.value
        if self._slide_handover(image_layer, method, entry, tc, imp):
            return
        avoid_triton_llvm_clash()
        self._cancelled = False
        # torch on all cores but one while it computes: one left for the viewer
        worker = create_worker(
            torch_threads_per_step(explain_work),
            image_layer.data,
            image_layer.multiscale,
            Placement.of(image_layer),
            method,
            entry,
            tc,
            imp,
            layer_pixel_size(image_layer),
            bool(self.outlines.value),
            _start_thread=False,
            _ignore_errors=True,  # shown in the dock (errored), not raised into napari
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda exc: self._report_error(str(exc)))
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.result.value = "running..."
        worker.start()

    def _slide_handover(self, layer, method, entry, target_class, importance) -> bool:
        """A whole slide goes to the Whole slide dock (viewer._slide_handover): True if so."""
        from histoview.viewer._slide_handover import hand_over, wants_slide_dock

        if not wants_slide_dock(layer, method, entry):
            return False
        try:
            self.result.value = hand_over(
                self.viewer,
                layer,
                method,
                entry,
                target_class,
                importance,
                self._all_methods,
                report_to=self.result,
            )
        except ValueError as exc:
            self._report_error(str(exc))
        return True

    def cancel(self, _event=None):
        """Stop the run at its next step; nothing is added."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            self.result.value = "cancelling..."

    def _on_progress(self, item):
        if self._cancelled:
            return
        step, text = item
        self.progress.value = step
        self.result.value = text

    def _on_aborted(self):
        self.progress.value = 0
        self.result.value = "cancelled"

    def _on_done(self, result):
        if self._cancelled:  # finished before it saw the request: drop the result
            self._on_aborted()
            return
        expl, layer_data, layers = result
        self._adding = True
        follow_base(self.viewer, layers)  # a pixel size typed while it ran
        # an earlier run with the same settings keeps its layers (data swapped); else the
        # worker's layers are inserted one per event-loop turn
        show_overlay(self.viewer, layer_data, layers, lambda shown: self._on_added(expl, shown))

    def _on_added(self, expl, layers):
        self._adding = False
        self.last_explanation = expl
        self.last_layers = layers
        from histoview.explain.display import format_probability
        from histoview.viewer._notice import set_notice

        set_notice(
            self.viewer,
            [lay for lay in self.viewer.layers if "histoview_explanation" in lay.metadata],
        )
        probs = ", ".join(
            f"{c} {format_probability(p)}" for c, p in zip(expl.classes, expl.probabilities)
        )
        lines = [explanation_title(expl), probs]
        mpp, source = (
            (expl.extra or {}).get("pixel_size_um"),
            (expl.extra or {}).get("pixel_size_source"),
        )
        if mpp:
            lines.append(f"pixel size {mpp:.3g} µm/px ({source})")
        lines += list((expl.extra or {}).get("warnings") or [])
        if expl.synthetic:
            lines.append("synthetic demo weights")
        self.result.value = "\n".join(lines)

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
