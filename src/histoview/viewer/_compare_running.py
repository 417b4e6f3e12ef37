"""The compare dock's runs: **Run all methods** and **Agreement & faithfulness**.

* :func:`run_all_work` / :func:`analysis_work` - generators run in a napari worker thread:
  they yield progress and new explanations *with their layer data ready*
  (:func:`~histoview.viewer.overlays.explanation_layer_data`) and return the agreement
  table, the faithfulness curves and the faithfulness figure already drawn (Agg); they
  never touch layers, so the main thread only adds prepared layers.
* :class:`RunActions` - the widget's side (a mixin of
  :class:`~histoview.viewer._compare.CompareWidget`): starts the worker, adds the prepared
  layers one per event-loop turn and shows the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from histoview.viewer import _compare_parts as parts
from histoview.viewer._calibration import follow_base
from histoview.viewer._compare_parts import FAITHFULNESS_STEPS
from histoview.viewer._compare_results import fill_agreement_table, render_faithfulness
from histoview.viewer._layer_updates import show_overlay
from histoview.viewer.overlays import layer_pixel_size, read_layer_for_model


# -- worker generators ------------------------------------------------------------------------
def run_all_work(
    data,
    multiscale: bool,
    pixel_size_um: float | None,
    methods: Sequence[str],
    load: Callable,
    steps: int = FAITHFULNESS_STEPS,
    where=None,
):
    """Explain with every method whose weights load, then compare them.

    ``where``: the :class:`~histoview.viewer.overlays.Placement` of the image layer, for the
    overlays' layer data (None: no layer data). Yields ``("progress", done, total, text)``
    and ``("explanation", expl, (layer_data, layers), predict, rgb)`` (the overlay's layer
    data tuples and the napari layers built from them, both None without ``where``); returns :func:`analysis_work`'s
    record plus ``"skipped"``: one line per method whose ``load(method)`` raised (e.g. no
    bundled weights). Methods whose weights are one checkpoint (Grad-CAM and DT Grad-CAM)
    share one predictor, so faithfulness predicts an input they share once.
    """
    from histoview.explain.methods import get_method, method_title
    from histoview.viewer._models import explain_read, predictor_for
    from histoview.viewer.overlays import build_layers, explanation_layer_data

    total = len(methods) + 1
    items, skipped, predictors = [], [], {}
    for i, method in enumerate(methods):
        yield "progress", i, total, f"{method}: loading weights"
        try:
            net, meta, sha = load(method)
        except Exception as exc:  # missing weights: list the method, go on with the others
            skipped.append(f"{method} ({exc})")
            continue
        read = read_layer_for_model(data, multiscale, pixel_size_um, meta)
        rgb, ds = read[:2]
        mpp = pixel_size_um * ds if pixel_size_um else None
        factory = get_method(method).predictor
        key = (sha, factory, mpp) if sha else (id(net), factory, mpp)
        if key in predictors:
            net = predictors[key][0]  # the same weights: one model, one predictor
        yield "progress", i, total, f"running {method_title(method)}"
        expl = explain_read(read, method, net, meta, sha, pixel_size_um)
        if key not in predictors:  # one per model for the session: it remembers its inputs
            predictors[key] = (net, predictor_for(factory, net, meta, sha, mpp))
        predict = predictors[key][1]
        layer_data = explanation_layer_data(expl, where) if where is not None else None
        layers = build_layers(layer_data) if layer_data is not None else None
        yield "explanation", expl, (layer_data, layers), predict, rgb
        items.append((expl, predict, rgb))
    if not items:
        return {
            "agreement": None,
            "faithfulness": {},
            "notes": [],
            "labels": [],
            "skipped": skipped,
            "figure": render_faithfulness({}),
        }
    result = yield from analysis_work(items, steps, done=len(methods), total=total + len(items))
    result["skipped"] = skipped
    return result


def analysis_work(
    items: Sequence[tuple],
    steps: int = FAITHFULNESS_STEPS,
    *,
    done: int = 0,
    total: int | None = None,
):
    """Agreement table and faithfulness curves of ``items`` = ``(expl, predict or None, rgb)``.

    Yields ``("progress", done, total, text)``; returns ``{"agreement", "faithfulness",
    "notes", "labels", "figure"}`` (faithfulness: label -> FaithfulnessResult, for items with
    a model; figure: :func:`render_faithfulness`).
    """
    from histoview.explain.agreement import agreement_table, method_labels
    from histoview.explain.faithfulness import deletion_insertion
    from histoview.viewer._models import model_lock

    expls = [it[0] for it in items]
    labels = method_labels(expls)
    total = total if total is not None else len(items) + 1
    yield "progress", done, total, "agreement: Spearman and top-10 % IoU"
    agreement = agreement_table(dict(zip(labels, expls)), fraction=0.1)
    faithfulness, notes = {}, []
    for k, (label, (expl, predict, rgb)) in enumerate(zip(labels, items)):
        if predict is None or rgb is None:
            notes.append(f"{label}: no model loaded here, faithfulness skipped")
            continue
        yield "progress", done + 1 + k, total, f"faithfulness: {label}"
        with model_lock(getattr(predict, "net", None)):  # a model other docks may share
            faithfulness[label] = deletion_insertion(expl, predict, rgb, steps=steps)
    yield "progress", done + len(items), total, "drawing the faithfulness curves"
    return {
        "agreement": agreement,
        "faithfulness": faithfulness,
        "notes": notes,
        "labels": labels,
        "figure": render_faithfulness(faithfulness),
    }


class RunActions:
    """Running the methods and the analysis for the compare widget (a mixin)."""

    # -- running ----------------------------------------------------------------------------------
    @staticmethod
    def _load(method: str):
        """(net, meta, sha) for ``method`` (its demo weights, loaded once per session);
        replaced in tests. Raises when weights are missing."""
        from histoview.viewer._models import load_model_for

        return load_model_for(method)

    def register_predictor(self, expl, predict, image=None) -> None:
        """Use ``predict`` (images -> probabilities) for ``expl``'s faithfulness curves."""
        self._predictors[id(expl)] = (expl, predict, image)

    def run_all(self, _checked=False, *, then_side_by_side: bool | None = None) -> None:
        """Explain with every method that has weights, in a worker thread; then compare.

        ``then_side_by_side``: show the panels when done (default: if they were shown before).
        """
        from histoview.viewer.overlays import Placement

        base = self.image_layer()
        if base is None:
            self._error("select an image layer first")
            return
        if self._worker is not None:
            self._error("already running: cancel it first")
            return
        from histoview.viewer._slide_handover import wants_slide_dock

        if any(wants_slide_dock(base, m) for m in self.methods):  # never a coarse level
            self._error(
                f"'{base.name}' is a whole slide: compare methods on a single image (or a "
                "region saved as one); explain the slide method by method in Plugins > "
                "histoview > Whole slide, where each map fills in over the slide"
            )
            return
        self._resume_side = self.side_by_side_on if then_side_by_side is None else then_side_by_side
        if self.side_by_side_on:
            self.stacked()
        data = base.data if base.multiscale else np.asarray(base.data)
        self._start(
            run_all_work,
            data,
            base.multiscale,
            layer_pixel_size(base),
            tuple(self.methods),
            self._load,
            self.steps,
            Placement.of(base),
            base=base,
        )

    def analyse(self, _checked=False) -> None:
        from histoview.io import to_rgb8

        try:
            base, expls = self._explanations()
        except ValueError as exc:
            self._error(str(exc))
            return
        image = None if base.multiscale else np.asarray(base.data)
        items = []
        for e in expls:  # faithfulness needs a model: only for explanations registered with one
            _, predict, rgb = self._predictors.get(id(e), (e, None, None))
            if predict is not None and rgb is None and image is not None:
                rgb = to_rgb8(image)
            items.append((e, predict, rgb))
        self._start(analysis_work, items, self.steps, base=base)

    def _start(self, func, *args, base) -> None:
        from napari.qt.threading import create_worker

        from histoview.viewer._compat import avoid_triton_llvm_clash
        from histoview.viewer._cpu_share import torch_threads_per_step

        if self._worker is not None:
            self._error("already running: cancel it first")
            return
        avoid_triton_llvm_clash()
        # torch on all cores but one: one left for the viewer
        worker = create_worker(
            torch_threads_per_step(func), *args, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(lambda item: self._on_yielded(base, item))
        worker.returned.connect(lambda result: self._queue(lambda: self._show_results(result)))
        worker.errored.connect(lambda exc: self._error(str(exc)))
        worker.aborted.connect(lambda: self.status.setText("cancelled"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        for b in (self.run_button, self.analyse_button):
            b.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("running...")
        worker.start()

    def cancel(self, _checked=False) -> None:
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("cancelling after the current step...")

    def _on_yielded(self, base, item) -> None:
        if item[0] == "progress":
            _, done, total, text = item
            self.progress.setMaximum(total)
            self.progress.setValue(done)
            self.status.setText(text)
        elif item[0] == "explanation":
            _, expl, (layer_data, layers), predict, rgb = item
            self.register_predictor(expl, predict, rgb)
            if layer_data:  # prepared in the worker: swapped in, or inserted one per turn
                self._queue(lambda: self._add_prepared(base, layer_data, layers))

    def _add_prepared(self, base, layer_data, layers) -> None:
        if base in self.viewer.layers:
            follow_base(self.viewer, layers)  # a pixel size typed while it ran
            show_overlay(
                self.viewer, layer_data, layers, schedule=lambda fn: self._queue(fn, first=True)
            )

    def _show_results(self, result) -> None:
        from histoview.viewer._notice import set_notice

        self.agreement = result.get("agreement")
        self.faithfulness = dict(result.get("faithfulness") or {})
        key = fill_agreement_table(self.table, self.agreement)
        from histoview.explain.agreement import class_mismatch

        mismatch = class_mismatch(self.agreement) if self.agreement else None
        self.table_note.setText(
            (f"{key}. " if key else "")
            + parts.TABLE_NOTE
            + (
                f" Grey: the two maps explain different classes ({mismatch}); compare with care."
                if mismatch
                else ""
            )
        )
        figure = result.get("figure")
        if figure is not None:
            self.figure, rgba = figure
            self._show_figure(rgba)
        self.progress.setValue(self.progress.maximum())
        lines = [f"compared {len(result.get('labels', []))} explanations"]
        if result.get("skipped"):
            lines.append("skipped (no weights): " + "; ".join(result["skipped"]))
        lines += result.get("notes", [])
        self.status.setText("\n".join(lines))
        base = self.image_layer()
        if base is not None:
            groups = parts.explanation_groups(self.viewer.layers, base)
            methods = [self._main(g).metadata["histoview_explanation"].method for g in groups]
            self.legend.setText(parts.colour_legend(methods) if methods else "")
        if not self.side_by_side_on:  # side by side keeps the notice clear of the panel titles
            set_notice(self.viewer, parts.explanation_layers(self.viewer.layers))

    def _show_figure(self, rgba: np.ndarray) -> None:
        from qtpy.QtGui import QImage, QPixmap

        h, w = rgba.shape[:2]
        image = QImage(rgba.tobytes(), w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.figure_view.set_picture(QPixmap.fromImage(image))

    def _on_finished(self) -> None:
        self._worker = None
        for b in (self.run_button, self.analyse_button):
            b.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._resume_side:
            self._resume_side = False
            self._queue(lambda: self.side_by_side(wait=False))
