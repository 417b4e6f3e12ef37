"""Models the docks have loaded, kept for the session: a checkpoint is read once, not per click.

:func:`load_model_for` returns ``(model, meta, sha256)`` as
:func:`histoview.explain.run.load_for_method` does, from a cache of the last
:data:`MAX_MODELS` checkpoints keyed by the method and the file (path, modification time and
size: a retrained or replaced file is loaded again). Two docks asking for the same model at
once wait for one load.

A cached model is shared by every dock and run: whatever runs it (an explanation, which may
hook its layers, or faithfulness's forward passes) holds :func:`model_lock` for that model,
so that two workers never interleave on it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

#: checkpoints kept loaded
MAX_MODELS = 6

_CACHE: OrderedDict = OrderedDict()
_LOADING: dict = {}
_LOCK = threading.Lock()
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


def cached_models() -> int:
    """How many models are loaded now."""
    with _LOCK:
        return len(_CACHE)


def clear() -> None:
    """Forget every loaded model."""
    with _LOCK:
        _CACHE.clear()


def model_lock(model):
    """A lock held while ``model`` runs (a context manager; a no-op for None)."""
    if model is None:
        return nullcontext()
    with _LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
    return lock
