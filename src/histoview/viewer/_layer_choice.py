"""Layer choices in the docks: magicgui's ComboBox for a napari layer annotation, filtered.

napari registers its layer types with magicgui, as napari's plugin template relies on:
``create_widget(annotation=napari.layers.Image)`` is a ComboBox whose choices are the Image
layers of the viewer the widget is docked in (``napari.current_viewer()`` until it is), and
napari calls a docked widget's ``reset_choices`` whenever layers are inserted, removed,
reordered or renamed. magicgui lets a registered type's options override the caller's, so a
filter cannot be passed as ``choices``; :func:`layer_choice` wraps napari's choices (read
through the widget's public ``options``) with a predicate instead.

Layers are compared with :func:`same_layer` (napari's ``unique_id``), never by identity: from
the plugin menu a widget gets napari's ``PublicOnlyProxy`` of the viewer, whose layers are
proxies of the objects napari's own lists and events hand out.
"""

from __future__ import annotations

from collections.abc import Callable

from histoview.viewer._compare_parts import role


def is_tissue_image(layer) -> bool:
    """A layer the user opened: not an explanation overlay (of an image or of a whole slide),
    not a compare-view panel layer."""
    meta = layer.metadata
    return (
        "histoview_explanation" not in meta
        and "histoview_slide" not in meta
        and role(layer) is None
    )


def is_explanation(layer) -> bool:
    """A layer holding an Explanation (heatmap or nuclei), not a compare-view panel layer."""
    return "histoview_explanation" in layer.metadata and role(layer) is None


def same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same napari layer (either may be None or a proxy)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


def layer_choice(layer_type, keep: Callable[[object], bool], *, label: str):
    """A magicgui ComboBox of the viewer's ``layer_type`` layers for which ``keep`` is true.

    ``layer_type`` is a napari layer class (``napari.layers.Image``, ``napari.layers.Layer``).
    The list follows the viewer when the widget (or the container holding it) is docked;
    call ``reset_choices`` to refresh it otherwise.
    """
    from magicgui.widgets import create_widget

    widget = create_widget(annotation=layer_type, label=label)
    napari_choices = widget.options["choices"]
    if not callable(napari_choices):  # napari registers a function of the widget
        raise RuntimeError(f"napari gave magicgui no layer choices for {layer_type.__name__}")
    widget.choices = lambda w: [lay for lay in napari_choices(w) if keep(lay)]
    return widget


def follow_layers(viewer, *choices) -> None:
    """Refresh ``choices`` (layer ComboBoxes) whenever ``viewer`` gains or loses a layer: napari
    does it for a docked widget; this also covers a widget made by a script or a test and
    not docked, and a choice inside a container napari does not walk."""
    for choice in choices:
        viewer.layers.events.inserted.connect(choice.reset_choices)
        viewer.layers.events.removed.connect(choice.reset_choices)
