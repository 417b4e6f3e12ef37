"""What the docks compute once per session: models, their faithfulness predictors, explanations.

* :func:`load_model_for` returns ``(model, meta, sha256)`` as
  :func:`histoview.explain.run.load_for_method` does, from a cache of the last
  :data:`MAX_MODELS` checkpoints keyed by the method and the file (path, modification time
  and size: a retrained or replaced file is loaded again). Two docks asking for the same
  model at once wait for one load.
* :func:`predictor_for` keeps one faithfulness predictor per model and pixel size, so that
  what a predictor remembers (each image's model input, the probabilities of every perturbed
  input it has seen) serves every later run.
* :func:`explain_once` remembers the last :data:`MAX_EXPLANATIONS` explanations by the
  image's content, the method, the weights' hash and every setting: the methods are
  deterministic, so an explanation asked for again (the same click, "Run all methods" after
  single runs) is the one already made.

* :func:`checkpoint_entries` lists the checkpoints a method can use. The list needs the
  model registry, whose modules import torch (seconds, the first time in a session): a dock
  asks :func:`listing_ready` first and, until it is, lets :func:`warm_up` read the list in
  its thread and hand it back (``listed``), so that the main thread never imports torch.

A cached model is shared by every dock and run: whatever runs it (an explanation, which may
hook its layers, or faithfulness's forward passes) holds :func:`model_lock` for that model,
so that two workers never interleave on it.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

#: checkpoints kept loaded
MAX_MODELS = 6
#: explanations remembered
MAX_EXPLANATIONS = 32
#: a checkpoint for :func:`warm_up`: the first that :func:`checkpoint_entries` lists for the
#: method (the docks' default)
FIRST_LISTED = "first listed"

#: explain_array's settings and their defaults: requests that differ only in spelling a
#: default are one request
_DEFAULTS = {
    "pixel_size_um": None,
    "target_class": None,
    "importance": None,
    "downsample": 1.0,
    "level": 0,
    "image_shape": None,
    "pixel_size_source": None,
}

_CACHE: OrderedDict = OrderedDict()
_PREDICTORS: OrderedDict = OrderedDict()
_EXPLANATIONS: OrderedDict = OrderedDict()
_LOADING: dict = {}
_LOCK = threading.Lock()
_LISTED = threading.Event()  # checkpoint_entries has answered once: the registry is loaded
_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checkpoint_path(method: str, checkpoint=None) -> Path:
    """The file a method's model is read from: ``checkpoint`` (a path or library name), else
    the method's bundled demo weights (CheckpointError when there are none)."""
    from histoview.explain.methods import get_method
    from histoview.models.library import bundled_checkpoint, find_checkpoint

    if checkpoint is not None:
        return find_checkpoint(checkpoint)
    return bundled_checkpoint(get_method(method).demo_weights, purpose=f"method {method!r}")


def _key(method: str, path: Path) -> tuple:
    path = Path(path).resolve()
    stat = path.stat()
    return method, str(path), stat.st_mtime_ns, stat.st_size


def load_model_for(method: str, checkpoint=None):
    """``(model, meta, sha256)`` of ``checkpoint`` (default: the method's demo weights) for
    ``method``, loaded once per file (module docstring); errors as ``load_for_method``'s."""
    from histoview.explain.run import load_for_method

    path = checkpoint_path(method, checkpoint)
    key = _key(method, path)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:  # a second caller waits for the first one's load
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
        loaded = load_for_method(method, checkpoint=path)
        with _LOCK:
            _CACHE[key] = loaded
            _LOADING.pop(key, None)
            while len(_CACHE) > MAX_MODELS:
                _CACHE.popitem(last=False)
    return loaded


def _model_key(model, sha) -> tuple:
    return ("sha", sha) if sha else ("object", id(model))


def predictor_for(factory, model, meta, sha, pixel_size_um):
    """``factory(model, meta, pixel_size_um=...)`` (a method's faithfulness predictor), made
    once per model (weights' hash) and pixel size for the session."""
    key = (_model_key(model, sha), factory, pixel_size_um)
    with _LOCK:
        found = _PREDICTORS.get(key)
        if found is not None and found[0] is model:
            return found[1]
    predict = factory(model, meta, pixel_size_um=pixel_size_um)
    with _LOCK:
        _PREDICTORS[key] = (model, predict)
        while len(_PREDICTORS) > MAX_MODELS * 2:
            _PREDICTORS.popitem(last=False)
    return predict


def explain_once(image, method: str, model, meta, sha, **settings):
    """:func:`histoview.explain.run.explain_array` of ``image`` (H, W, 3) uint8, or the
    explanation it gave before for the same pixels, method, weights and ``settings``
    (module docstring). Hold :func:`model_lock` around it."""
    import hashlib

    import numpy as np

    from histoview.explain.run import explain_array

    rgb = np.ascontiguousarray(image)
    digest = hashlib.blake2b(memoryview(rgb).cast("B"), digest_size=16).hexdigest()
    given = {**_DEFAULTS, **settings}
    if given["image_shape"] is None:  # the image's own shape, as explain_array reads None
        given["image_shape"] = tuple(rgb.shape[:2])
    given["image_shape"] = tuple(int(v) for v in given["image_shape"])
    key = (digest, rgb.shape, method, _model_key(model, sha), repr(sorted(given.items())))
    with _LOCK:
        found = _EXPLANATIONS.get(key)
        if found is not None:
            _EXPLANATIONS.move_to_end(key)
            return found
    expl = explain_array(rgb, method, model, meta, sha, **settings)
    with _LOCK:
        _EXPLANATIONS[key] = expl
        while len(_EXPLANATIONS) > MAX_EXPLANATIONS:
            _EXPLANATIONS.popitem(last=False)
    return expl


def explain_read(read, method: str, model, meta, sha, pixel_size_um, **settings):
    """:func:`explain_once` of a layer read for the model, under :func:`model_lock`:
    ``read`` is :func:`~histoview.viewer.overlays.read_layer_for_model`'s ``(rgb,
    downsample, level, level-0 shape)``, ``pixel_size_um`` the layer's level-0 um/px (None:
    unknown). What an explain dock and Run all both do."""
    rgb, downsample, level, shape0 = read
    with model_lock(model):  # the same request again: the explanation already made
        return explain_once(
            rgb,
            method,
            model,
            meta,
            sha,
            pixel_size_um=pixel_size_um * downsample if pixel_size_um else None,
            downsample=downsample,
            level=level,
            image_shape=shape0,
            **settings,
        )


def warm_up(methods_and_checkpoints, load=None, imports=(), listed=None) -> None:
    """Load ``(method, checkpoint)`` models (checkpoint None: the demo weights;
    :data:`FIRST_LISTED`: the first checkpoint listed for the method) in a background thread,
    importing what their methods need on the way and then the modules named in ``imports``,
    so that a dock's first click does not wait for it; errors are left for that click to
    report. Model loads and imports are skipped when the environment variable
    ``HISTOVIEW_WARMUP`` is ``0``.

    ``listed``: called in that thread, before any model is loaded, with
    ``{method: checkpoint_entries(method)}`` for the methods of ``methods_and_checkpoints``
    (an empty list where listing failed: the dock's own listing reports it); done whatever
    ``HISTOVIEW_WARMUP`` says (a dock needs its list). The callee passes it on to the main
    thread.
    """
    import os

    from histoview.viewer._compat import avoid_triton_llvm_clash

    todo = list(methods_and_checkpoints)
    if os.environ.get("HISTOVIEW_WARMUP", "1") == "0":
        if listed is None:
            return
        loads, imports = [], ()
    else:
        loads = todo
    if not todo or (not loads and listed is None):
        return
    avoid_triton_llvm_clash()  # before torch's compiler stack is imported (graph models)
    loader = load or load_model_for

    def work():
        import importlib

        entries = {}
        if listed is not None or any(c == FIRST_LISTED for _, c in loads):
            for method in dict.fromkeys(m for m, _ in todo):
                try:
                    entries[method] = checkpoint_entries(method)
                except Exception:  # noqa: BLE001 - the dock's own listing reports it
                    entries[method] = []
            if listed is not None:
                listed(entries)
        for method, checkpoint in loads:
            if checkpoint == FIRST_LISTED:
                if not entries.get(method):
                    continue
                checkpoint = entries[method][0][1].path
            try:
                loader(method) if checkpoint is None else loader(method, checkpoint)
            except Exception:  # noqa: BLE001 - the dock's click reports it
                pass
        for name in imports:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - imported (and reported) where it is used
                pass

    thread = threading.Thread(target=work, name="histoview-warm-up", daemon=True)
    if not _WARMING:
        atexit.register(_finish_warm_ups)
    _WARMING.append(thread)
    thread.start()


#: warm-up threads started (:func:`_finish_warm_ups` waits for them at exit)
_WARMING: list = []


def open_warm_up_methods() -> list[str]:
    """The methods whose default models :func:`warm_up_on_open` loads: those "Run all
    methods" includes (every explanation dock's and the compare dock's), the nuclei graph's
    last, as it also imports torch-geometric (1-2 s of CPU more on a 2-core CPU)."""
    from histoview.explain.methods import get_method, list_methods

    return sorted(list_methods(run_all=True), key=lambda m: get_method(m).kind == "graph")


#: how long after an image is opened its warm-up starts: the layer's insertion and first
#: draws come first (importing torch in a thread holds the GIL in stretches of 0.1-0.4 s),
#: and a dock opened within it warms its own model instead (:func:`_warm_up_unless_begun`)
OPEN_WARM_UP_DELAY_S = 2.0
_OPEN_WARM_UP: list = []  # the timer of the one warm-up an open starts per session


def _warm_up_unless_begun() -> None:
    """:func:`warm_up_on_open`'s work, unless a dock began its own warm-up meanwhile (a dock
    opened at once after the image: two warm-ups would share the CPU with its first click)."""
    if not _WARMING:
        warm_up([(m, FIRST_LISTED) for m in open_warm_up_methods()])


def warm_up_on_open(delay_s: float = OPEN_WARM_UP_DELAY_S) -> bool:
    """Once per session, when an image is opened in a napari viewer: ``delay_s`` later, read
    the model list and warm the docks' default models (the first checkpoint listed for each of
    :func:`open_warm_up_methods`) in the background, so that a dock opened a few seconds after
    the image answers its first click at once instead of waiting seconds for torch; nothing
    when a dock has begun its own warm-up by then. Nothing without a viewer (scripts and the
    command line read images too) or when ``HISTOVIEW_WARMUP`` is ``0``. Returns whether it
    started the timer."""
    import os

    napari = sys.modules.get("napari")  # not imported here: no viewer, no warm-up
    if _OPEN_WARM_UP or napari is None or os.environ.get("HISTOVIEW_WARMUP", "1") == "0":
        return False
    try:
        if napari.current_viewer() is None:
            return False
    except Exception:  # noqa: BLE001 - a napari without a viewer registry: no warm-up
        return False
    timer = threading.Timer(delay_s, _warm_up_unless_begun)
    timer.daemon = True
    _OPEN_WARM_UP.append(timer)
    timer.start()
    return True


def _finish_warm_ups(timeout: float = 30.0) -> None:
    """At exit, let warm-up threads finish their import or model load: a thread stopped by
    the interpreter's shutdown inside torch's C++ code aborts the process ("terminate called
    without an active exception") as napari closes."""
    import time

    end = time.monotonic() + timeout
    for thread in _WARMING:
        thread.join(max(0.0, end - time.monotonic()))


def cached_models() -> int:
    """How many models are loaded now."""
    with _LOCK:
        return len(_CACHE)


def clear() -> None:
    """Forget every loaded model, predictor and explanation."""
    with _LOCK:
        _CACHE.clear()
        _PREDICTORS.clear()
        _EXPLANATIONS.clear()


def model_lock(model):
    """A lock held while ``model`` runs (a context manager; a no-op for None)."""
    if model is None:
        return nullcontext()
    with _LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
    return lock


def listing_ready() -> bool:
    """Whether :func:`checkpoint_entries` answers at once, without importing torch: it has
    answered before, or the model registry is loaded (and not being loaded by another
    thread, which would make the caller wait for it)."""
    if _LISTED.is_set():
        return True
    package = sys.modules.get("histoview.models")
    spec = getattr(package, "__spec__", None)
    return package is not None and not getattr(spec, "_initializing", False)


def checkpoint_entries(method: str) -> list:
    """(label, entry) of every checkpoint ``method`` can use: the user's library, then bundled.
    Imports torch when the registry is not loaded yet (:func:`listing_ready`)."""
    from histoview.explain.methods import get_method
    from histoview.models.library import list_checkpoints
    from histoview.models.registry import get_model_config

    spec = get_method(method)
    entries = [
        e for e in list_checkpoints(kind=spec.kind) if spec.accepts(get_model_config(e.model))
    ]
    _LISTED.set()
    return [(e.label(), e) for e in entries]
