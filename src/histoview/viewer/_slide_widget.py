"""The whole-slide dock: explain a slide (or the current view, or a drawn rectangle) with any
method, and watch the overlay fill in tile by tile while panning.

The run is the core's slide engine (:func:`histoview.explain.slide_run.explain_slide`: tiles
at the model's pixel size, background skipped, maps merged on disk, resumable) in a worker
thread. A second worker loop (:mod:`~histoview.viewer._slide_running`) reads the engine's
working store every half second (:mod:`~histoview.viewer._slide_live`) and hands the main
thread ready arrays; the main thread only swaps them into three layers: the tissue mask, the tiles
done, and the map. Cancel stops the engine between batches; pressing the button again resumes
from the tiles already done. The written outputs (``<stem>.<method>.ome.tif`` and the JSON
summary) open in napari and QuPath in place. After a graph run its nuclei are read in a worker
thread and laid over the slide as points that follow the camera (edges when zoomed in).

Each slide, method and region keeps its own layers (the tissue mask, one per slide;
:mod:`~histoview.viewer._slide_layers`): a rerun swaps its data in, a run of another method,
region or slide adds its own. An explain dock hands a slide over with
:meth:`SlideWidget.start` (:mod:`~histoview.viewer._slide_handover`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from histoview import RESEARCH_NOTICE
from histoview.explain.methods import get_method, list_methods, method_title
from histoview.viewer._compat import avoid_triton_llvm_clash
from histoview.viewer._layer_choice import follow_layers, is_tissue_image, layer_choice, same_layer
from histoview.viewer._models import checkpoint_entries
from histoview.viewer._slide_layers import SLIDE_KEY, SlideLayers
from histoview.viewer._slide_live import world_box_to_region
from histoview.viewer._slide_running import SlideNucleiShown, result_text, slide_work
from histoview.viewer._widgets import DockContainer, compact, wrapping
from histoview.viewer.overlays import tissue_colormap

if TYPE_CHECKING:
    import napari

SCOPES = ("whole slide", "current view", "drawn rectangle")


def slide_methods() -> list[str]:
    """The methods that run on whole slides (those whose registry record has a processor)."""
    return [m for m in list_methods() if getattr(get_method(m), "slide", None) is not None]


def is_slide_layer(layer) -> bool:
    """An image the user opened from a file histoview reads (the engine reads the file)."""
    info = layer.metadata.get("histoview") or {}
    return is_tissue_image(layer) and SLIDE_KEY not in layer.metadata and bool(info.get("path"))


def default_out_dir() -> Path:
    """Where slide outputs go unless the user picks a folder: the user's histoview data folder."""
    import platformdirs

    return Path(platformdirs.user_data_dir("histoview")) / "slides"


class SlideWidget(SlideLayers, DockContainer):
    """Dock: slide layer, method, model, scope, device, batch size, workers, output folder,
    run/cancel, progress, result (module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        from napari.layers import Image

        self.viewer = viewer
        self._worker = None
        self._cancel = threading.Event()
        # (slide id, method or None, region or None, role) -> layer (_slide_layers)
        self._layers: dict[tuple, object] = {}
        self._extras: tuple = ()  # (slide id, method, checkpoint, target class, options)
        self._nuclei = SlideNucleiShown(viewer)
        self.last_result = None
        self._notify = None  # start(on_finish=...): told when that run ends
        self.first_tiles_s: float | None = None
        self._pending = None  # a snapshot whose layers are still being made (_show)
        self._inserted_at = -1e9  # perf_counter of this dock's last layer insertion
        methods = slide_methods()
        self.slide_choice = layer_choice(Image, is_slide_layer, label="slide")
        self.method_choice = ComboBox(
            label="method",
            choices=[(method_title(m), m) for m in methods],  # shown by title, valued by id
            value="amil" if "amil" in methods else None,
        )
        self.model_choice = ComboBox(
            label="model", choices=lambda _w=None: checkpoint_entries(self.method_choice.value)
        )
        self.scope = ComboBox(label="explain", choices=list(SCOPES), value=SCOPES[0])
        self.device = ComboBox(label="device", choices=_devices(), value="auto")
        self.batch_size = SpinBox(label="batch size", min=1, max=1024, value=32)
        self.workers = SpinBox(
            label="reader workers",
            min=0,
            max=32,
            value=min(2, max(0, (os.cpu_count() or 1) - 1)),
            tooltip="DataLoader processes reading tiles while the model computes (0: read in "
            "the run's own thread)",
        )
        self.out_dir = FileEdit(label="output folder", mode="d", value=str(default_out_dir()))
        self.show_tissue = CheckBox(label="show tissue mask", value=True)
        self.run_button = PushButton(text="Explain slide")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="tiles", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        compact(self.slide_choice, self.model_choice)
        wrapping(self.status)
        self.notice = Label(value=RESEARCH_NOTICE)
        self.extend(
            [
                self.slide_choice,
                self.method_choice,
                self.model_choice,
                self.scope,
                self.device,
                self.batch_size,
                self.workers,
                self.out_dir,
                self.show_tissue,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.notice,
            ]
        )
        self.method_choice.changed.connect(self._method_changed)
        self.slide_choice.changed.connect(self._slide_changed)
        self.show_tissue.changed.connect(self._tissue_toggled)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        follow_layers(viewer, self.slide_choice)
        # an emptied list sets the value to None without a change event: look after each
        # removal too (connected after follow_layers, so the list is current by then)
        viewer.layers.events.removed.connect(self._slide_changed)
        self._method_changed()
        from histoview.viewer._pathology_view import SHORTCUTS, install

        # scale bar, shortcuts (run and cancel act on the last dock used: this one once its
        # run is pressed), the view re-fitted once the dock has its room, the canvas hooks
        install(viewer)
        self.notice.tooltip = "Shortcuts: " + "; ".join(f"{k}: {v}" for k, v in SHORTCUTS.items())

    # -- choices ------------------------------------------------------------------------------
    def _slide_changed(self, _event=None):
        """Another slide (or none): the last run's result and progress were about the other."""
        slide, shown = self.slide_choice.value, getattr(self, "_slide", None)
        if self.busy or same_layer(slide, shown):
            return
        self.status.value = ""
        self.progress.value = 0

    def _method_changed(self, _event=None):
        method = self.method_choice.value
        if method is None:
            return
        current = self.model_choice.value
        self.model_choice.reset_choices()
        for _, entry in checkpoint_entries(method):
            if current is not None and entry.path == current.path:
                self.model_choice.value = entry
        self.run_button.text = f"Explain slide with {method_title(method)}"
        self.run_button.tooltip = get_method(method).citation

    @property
    def busy(self) -> bool:
        """A run is in progress (or its nuclei are still being read)."""
        return self._worker is not None or self._nuclei.loading

    def start(self, layer, method, checkpoint=None, scope="whole slide", **extras) -> None:
        """Explain ``layer`` with ``method`` as if the user had chosen it, ``checkpoint`` (a
        path; None: the dock's default) and ``scope`` here and pressed Explain slide.
        ``extras`` (``target_class``, ``options``) go to the engine for this slide, method and
        model, also when the dock's button resumes the run; ``on_finish`` (a callable) is
        called once with the dock's last status line when this run ends (done, cancelled or
        failed). Raises ValueError when ``layer`` is not offered here or the dock is busy."""
        from histoview.viewer._layer_choice import same_layer

        if self.busy:
            raise ValueError("the Whole slide dock is still explaining a slide")
        self.slide_choice.reset_choices()
        match = [c for c in self.slide_choice.choices if same_layer(c, layer)]
        if not match:
            raise ValueError(f"{layer.name!r} is not a slide the Whole slide dock can read")
        self.slide_choice.value = match[0]
        self.method_choice.value = method
        for _, entry in checkpoint_entries(method) if checkpoint is not None else ():
            if str(entry.path) == str(checkpoint):
                self.model_choice.value = entry
        self.scope.value = scope
        entry = self.model_choice.value
        path = entry.path if entry is not None else None
        self._extras = (
            layer.unique_id,
            method,
            path,
            extras.get("target_class"),
            extras.get("options"),
        )
        self.run()
        if self._worker is not None:
            self._notify = extras.get("on_finish")

    def region(self):
        """The level-0 (row, col, height, width) to explain for the chosen scope (None: all)."""
        layer = self.slide_choice.value
        scope = self.scope.value
        if scope == "whole slide" or layer is None:
            return None
        shape0 = layer.level_shapes[0] if layer.multiscale else layer.data.shape
        scale, translate = tuple(layer.scale), tuple(layer.translate)
        if scope == "current view":
            scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; before, viewer.camera
            camera = scene.camera if scene is not None else self.viewer.camera
            cy, cx = camera.center[-2:]
            h, w = self.viewer.canvas.size
            zoom = float(camera.zoom)
            box = ((cy - h / 2 / zoom, cx - w / 2 / zoom), (cy + h / 2 / zoom, cx + w / 2 / zoom))
        else:
            box = self._drawn_box()
        region = world_box_to_region(box, scale, translate, shape0)
        if region is None:
            raise ValueError(f"the {scope} does not overlap the slide {layer.name!r}")
        return region

    def _drawn_box(self):
        from napari.layers import Shapes

        selected = self.viewer.layers.selection.active
        shapes = [selected] if isinstance(selected, Shapes) else []
        shapes += [lay for lay in reversed(self.viewer.layers) if isinstance(lay, Shapes)]
        for lay in shapes:
            for data, kind in zip(reversed(lay.data), reversed(lay.shape_type)):
                if kind in ("rectangle", "polygon") and len(data):
                    pts = np.array([lay.data_to_world(p) for p in data], float)[:, -2:]
                    lo, hi = pts.min(0), pts.max(0)
                    return ((lo[0], lo[1]), (hi[0], hi[1]))
        raise ValueError(
            "draw a rectangle first: add a Shapes layer, pick the rectangle tool and drag it "
            "over the slide"
        )

    # -- running ------------------------------------------------------------------------------
    def run(self, _event=None):
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return
        from histoview.viewer._pathology_view import remember_dock

        remember_dock(self.viewer, self)
        layer, entry, method = (
            self.slide_choice.value,
            self.model_choice.value,
            self.method_choice.value,
        )
        if layer is None:
            self._report_error("open a slide first (File > Open, or File > Open Sample)")
            return
        if entry is None or method is None:
            self._report_error(f"no model available for {method}: train one or add a checkpoint")
            return
        try:
            region = self.region()
        except ValueError as exc:
            self._report_error(str(exc))
            return
        info = layer.metadata.get("histoview") or {}
        extras = (
            self._extras[3:] if self._extras[:3] == (layer.unique_id, method, entry.path) else ()
        )
        target_class, options = extras or (None, None)
        user_mpp = info.get("pixel_size_um") if info.get("pixel_size_source") == "user" else None
        avoid_triton_llvm_clash()
        self._cancel.clear()
        self._slide = layer
        self._method = method
        self._synthetic = bool(getattr(entry, "synthetic", False))
        self._region = None if region is None else tuple(int(round(v)) for v in region)
        self._bring_forward()
        self._out = Path(self.out_dir.value)
        self._started = time.perf_counter()
        self.first_tiles_s = None
        self._pending = None
        worker = create_worker(
            slide_work,
            info["path"],
            method,
            entry.path,
            region,
            user_mpp,
            None if self.device.value == "auto" else self.device.value,
            int(self.batch_size.value),
            int(self.workers.value),
            Path(self.out_dir.value),
            self._cancel,
            target_class=target_class,
            options=options,
            _start_thread=False,
            _ignore_errors=True,  # shown in the dock (errored), not raised into napari
        )
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_done)
        worker.errored.connect(lambda exc: self._report_error(str(exc)))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "finding tissue..."
        worker.start()

    def cancel(self, _event=None):
        """Stop the engine between batches; the tiles done stay in the store for a resume."""
        if self._worker is not None:
            self._cancel.set()
            self.status.value = "cancelling (after the current batch)..."

    def _on_yield(self, item):
        kind, payload = item
        if kind == "tissue":
            mask, factor = payload
            self._swap("tissue", mask, factor, (0.0, 0.0), colormap=tissue_colormap(), opacity=1.0)
            self._tissue_toggled()
        elif kind == "snapshot":
            self._show(payload)

    def _on_done(self, outcome):
        result, snap = outcome
        self.last_result = result
        if snap is not None:
            self._show(snap, defer=False)  # the run is over: every layer now
        self._pending = None
        tiles = self._layers.get(self._key("tiles"))
        if tiles is not None:  # kept after a cancel: it shows which part the map covers
            tiles.visible = bool(result.cancelled)
        note = (self._slide.metadata.get("histoview") or {}).get("pixel_size_note")
        self.status.value = result_text(result, note)
        nuclei = (result.summary or {}).get("nuclei_files", {}).get("nuclei")
        if nuclei and not result.cancelled:
            self._nuclei.load(
                (self._slide.unique_id, self._method, self._region),
                self._out / nuclei,
                self._slide,
                name=f"{self._slide.name} · nuclei",
                colormap=get_method(self._method).colormap,
                report=self._report_error,
            )

    def _on_finished(self):
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        notify, self._notify = self._notify, None
        if notify is not None:
            notify(self.status.value)

    def _report_error(self, message: str):
        from napari.utils.notifications import show_error

        self.status.value = f"error: {message}"
        show_error(f"histoview: {message}")


def _devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
