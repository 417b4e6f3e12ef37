"""What the explanation dock runs off the main thread: :func:`explain_work`, a generator
for a napari worker thread (model, image at the model's resolution, the explanation, the
overlay's layer data and layers), so the main thread only inserts ready layers."""

from __future__ import annotations

from histoview.explain.methods import method_title
from histoview.viewer.overlays import read_layer_for_model


def no_model(method: str) -> str:
    """The message when no checkpoint fits ``method``."""
    return f"no model available for {method}: train one or add a checkpoint"


def explain_work(data, multiscale, where, method, entry, target_class, importance, mpp, outlines):
    """Generator run in a worker thread: yields (step, text), returns (explanation, layer
    data). Every yield is a point where Cancel stops it."""
    from histoview.viewer._models import explain_read, load_model_for
    from histoview.viewer.overlays import build_layers, explanation_layer_data

    if entry is None:  # pressed before the first model list arrived: its default
        from histoview.viewer._models import checkpoint_entries

        yield 1, "reading the model list"
        entries = checkpoint_entries(method)
        if not entries:
            raise RuntimeError(no_model(method))
        entry = entries[0][1]
    yield 1, "loading model"
    net, meta, sha = load_model_for(method, entry.path)  # read once per session
    yield 2, "reading image"
    read = read_layer_for_model(data, multiscale, mpp, meta)
    rgb = read[0]
    yield 3, f"running {method_title(method)} on {rgb.shape[1]} x {rgb.shape[0]} pixels"
    expl = explain_read(
        read, method, net, meta, sha, mpp, target_class=target_class, importance=importance
    )
    yield 4, "drawing"
    layer_data = explanation_layer_data(expl, where, outlines=outlines)
    layers = build_layers(layer_data)
    yield 5, "adding the overlay"
    return expl, layer_data, layers
