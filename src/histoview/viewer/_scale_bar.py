"""napari's scale bar on, in micrometres, when an image layer is calibrated in µm.

Its own module, importing nothing else of histoview's viewer: the reader and the samples
turn the bar on as an image opens (:func:`follow_scale_bar_of_current_viewer`), and every
dock does through :func:`histoview.viewer._pathology_view.install`.
"""

from __future__ import annotations

import weakref

_SCALE_BAR: weakref.WeakSet = weakref.WeakSet()  # viewers whose scale bar follows the layers


#: how napari and histoview spell micrometres in a layer's units
MICROMETRE_UNITS = ("um", "micrometer", "micrometre", "µm")


def in_micrometres(layer) -> bool:
    """Whether ``layer`` is drawn in micrometres (its last axis' units)."""
    return str(getattr(layer, "units", ("",))[-1]) in MICROMETRE_UNITS


def calibrated(viewer) -> bool:
    """Whether an image layer of ``viewer`` has a known pixel size and is drawn in µm."""
    return any(
        in_micrometres(lay) and (lay.metadata.get("histoview") or {}).get("pixel_size_um")
        for lay in viewer.layers
    )


def update_scale_bar(viewer, _event=None) -> None:
    """Scale bar on, in micrometres, when an image layer is calibrated in µm."""
    if calibrated(viewer):  # the bar's units come from the layers' units (napari >= 0.9)
        scale_bar(viewer).visible = True


def follow_scale_bar(viewer) -> None:
    """The scale bar turned on (:func:`update_scale_bar`) now and whenever a layer is added
    to ``viewer``, once per viewer: every dock does it, and so does histoview's reader, so
    that a calibrated image has its bar before any dock is opened."""
    if viewer in _SCALE_BAR:
        return
    _SCALE_BAR.add(viewer)
    update_scale_bar(viewer)
    viewer.layers.events.inserted.connect(lambda _event: update_scale_bar(viewer))


def follow_scale_bar_of_current_viewer() -> None:
    """:func:`follow_scale_bar` for napari's current viewer, if any: what histoview's reader
    and samples do when they open an image (its layer is added just after)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        follow_scale_bar(viewer)


def scale_bar(viewer):
    """napari's scale bar overlay (``viewer.canvas.overlays`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None:
        return canvas.overlays["scale_bar"]
    return viewer.scale_bar
