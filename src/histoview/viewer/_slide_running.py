"""The whole-slide dock's work off the UI thread: the tissue mask, the slide engine in a thread
of its own, and snapshots of its working store for the main thread to swap in
(:mod:`histoview.viewer._slide_widget`); after a graph run, its nuclei read in a worker thread
and shown over the slide (:class:`SlideNucleiShown`)."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path

from histoview import SYNTHETIC_NOTICE
from histoview.viewer._slide_live import read_snapshot, tissue_display

#: seconds between two looks at the running store
REFRESH_S = 0.5


def slide_work(
    path,
    method,
    checkpoint,
    region,
    pixel_size,
    device,
    batch,
    workers,
    out_dir,
    stop,
    *,
    target_class=None,
    options=None,
):
    """Worker generator: the tissue mask first (shown at once), then the engine in a thread of
    its own (``target_class``, ``options``: the method's, as an explain dock set them). Yields ``("tissue", (mask, factor))`` and ``("snapshot", Snapshot)``: one as soon
    as the engine has opened its store (the tiles of a resumed run, or none: the main thread
    makes its layers while the first tile computes), then one after each batch, at most every
    :data:`REFRESH_S` s (never the same store twice); returns ``(SlideResult, last Snapshot)``.
    Everything read from disk is read here; the main thread only gets arrays."""
    from histoview.explain.slide_grid import clip_region
    from histoview.explain.slide_run import explain_slide, resolve_slide_pixel_size, working_store
    from histoview.io import open_image
    from histoview.preprocessing.tissue import detect_tissue
    from histoview.viewer._cpu_share import torch_threads

    with open_image(path) as src:
        resolve_slide_pixel_size(src, pixel_size)
        tissue = detect_tissue(src)
        p0 = src.pixel_size_um
        box = None if region is None else clip_region(region, src.shape[:2], path=path)
    yield "tissue", (tissue_display(tissue.mask), tissue.pixel_size_um / p0)

    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run():
        try:
            with torch_threads(leave_one=True, device=device):  # one core for the viewer
                outcome["result"] = explain_slide(
                    path,
                    method,
                    out_dir=out_dir,
                    checkpoint=checkpoint,
                    pixel_size_um=pixel_size,
                    region=region,
                    target_class=target_class,
                    options=options,
                    device=device,
                    batch_size=batch,
                    workers=workers,
                    progress=events.put,
                    cancel=stop.is_set,
                    tissue=tissue,
                    keep_store=True,
                    report=lambda line: events.put({"report": line}),
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker below
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=run, name="histoview-slide", daemon=True)
    thread.start()
    store = working_store(out_dir, path, method, box)  # where explain_slide keeps it
    latest: dict = {}
    last, snap, changed = 0.0, None, False
    while True:
        try:
            event = events.get(timeout=0.05)
        except queue.Empty:
            event = {}
        if event is None:
            break
        line = event.pop("report", None)
        # explain_slide reports "store: ..." once it has opened (or resumed) the store
        changed |= bool(event) or (line is not None and line.startswith("store:"))
        latest.update(event)
        first = snap is None or (not snap.done and bool(latest.get("done")))
        if changed and (first or time.monotonic() - last >= REFRESH_S):
            try:
                fresh = read_snapshot(store, progress=latest)
            except Exception:  # noqa: BLE001 - a chunk being written: look again next time
                fresh = None
            if fresh is not None:
                snap, last, changed = fresh, time.monotonic(), False
                yield "snapshot", snap
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    final = read_snapshot(result.store_path, progress=latest) if result.store_path else None
    if not result.cancelled and result.store_path is not None:
        shutil.rmtree(result.store_path, ignore_errors=True)  # outputs written: not needed
    return result, final or snap


def result_text(result, file_note: str | None = None) -> str:
    """The dock's status line after a run: prediction, what was written, and how the slide's
    pixel size was found when the file did not give it (``file_note``: why a value in the
    file was ignored, as the reader recorded it, e.g. a 72-dpi tag)."""
    summary = result.summary or {}
    if result.cancelled:
        done, total = summary.get("tiles_done"), summary.get("tiles_total")
        return (
            f"cancelled at {done} / {total} tiles: the map covers only the tiles done (the "
            "'tiles done' layer shows which); press Explain slide again to resume from them"
        )
    lines = []
    pred, probs = summary.get("predicted_label"), summary.get("probabilities")
    if pred is not None:
        lines.append(f"slide prediction: {pred}")
    if isinstance(probs, dict):
        from histoview.explain.display import format_probability

        lines.append(", ".join(f"{k} {format_probability(v)}" for k, v in probs.items()))
    if summary.get("slide_pixel_size") and summary.get("slide_pixel_size_source") != "file":
        lines.append(f"slide pixel size: {summary['slide_pixel_size']}")
        if file_note:
            lines.append(f"the file's own value was not used: {file_note}")
    if summary.get("tiles_skipped"):
        lines.append(f"{summary['tiles_skipped']} unreadable tiles skipped (listed in the JSON)")
    if result.outputs:
        lines.append("written: " + ", ".join(Path(p).name for p in result.outputs.values()))
    if summary.get("synthetic"):
        lines.append(SYNTHETIC_NOTICE)
    return "\n".join(lines) or "done"


class SlideNucleiShown:
    """The nuclei of finished graph runs over their slides, one
    :class:`~histoview.viewer._nuclei_layers.SlideNucleiLayers` per (slide, method).

    :meth:`load` reads ``<stem>.graph.nuclei.npz`` and indexes it in a worker thread
    (:func:`~histoview.viewer._nuclei_layers.prepare_nuclei`: seconds for 100k+ nuclei); the
    main thread only adds the layers. A rerun of the same slide and method replaces its layers;
    when the user deletes the points, the edges go too and the camera is no longer followed.
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.shown: dict = {}
        self._worker = None
        viewer.layers.events.removed.connect(self._removed)

    @property
    def loading(self) -> bool:
        return self._worker is not None

    def load(self, key, path, slide_layer, *, name: str, colormap: str, report=None) -> None:
        """Show the nuclei at ``path`` over ``slide_layer`` as ``name`` (replacing ``key``'s);
        ``report`` is called on the main thread with a line when they cannot be shown."""
        from napari.qt.threading import create_worker

        from histoview.viewer._nuclei_layers import prepare_nuclei

        worker = create_worker(
            prepare_nuclei, path, colormap, _start_thread=False, _ignore_errors=report is not None
        )
        worker.returned.connect(lambda prepared: self._show(key, prepared, slide_layer, name))
        if report is not None:
            worker.errored.connect(lambda exc: report(f"nuclei not shown: {exc}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _finished(self):
        self._worker = None

    def _show(self, key, prepared, slide_layer, name):
        from histoview.viewer._nuclei_layers import SlideNucleiLayers

        self.drop(key)
        self.shown[key] = SlideNucleiLayers(self.viewer, prepared, slide_layer, name=name)
        self.viewer.layers.selection.active = slide_layer

    def drop(self, key) -> None:
        """Remove ``key``'s nuclei layers (those still there) and stop following the camera."""
        layers = self.shown.pop(key, None)
        if layers is None:
            return
        layers.close()
        for layer in (layers.points, layers.edges):
            if any(lay.unique_id == layer.unique_id for lay in self.viewer.layers):
                self.viewer.layers.remove(layer)

    def _removed(self, event) -> None:
        """The points deleted: the edges go too. The edges deleted: the points stay (and
        follow the camera), no edges are made any more."""
        gone = event.value.unique_id
        for key, layers in list(self.shown.items()):
            if gone == layers.points.unique_id:
                self.drop(key)
            elif gone == layers.edges.unique_id:
                layers.max_edge_nuclei = -1
