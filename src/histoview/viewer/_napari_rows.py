"""napari's layer list without a repaint of every row on every zoom step.

napari 0.9's layers emit ``scale_factor`` on every zoom step (``Layer._update_draw``), and
points and shapes layers emit ``highlight`` as the mouse moves over them. napari's layer list
model (``QtLayerListModel._process_event``) turns every layer event that carries an index into
``dataChanged`` for that row *with no roles*, which tells the list view that everything in the
row changed: the view repaints the row (its thumbnail, its SVG icons, and ``all_loaded()``,
which asks every other row). With the 14 layers of ten explanations this was ~68 ms of main-
thread CPU in each zoom frame on a 2-core CPU: 40 % of a frame under software OpenGL, and on a
GPU most of what a zoom frame costs the main thread.

:func:`install` makes the model ignore those two event types. Neither changes anything a row
shows: its name, thumbnail, visibility, loaded and lock state each have an event of their
own, which the model still turns into ``dataChanged`` as before. It patches only a napari
whose layer list model has ``_process_event`` (napari 0.9); on any other it changes nothing.
"""

from __future__ import annotations

from ._patching import Patches

#: layer events that change nothing a row of the layer list shows (see the module's text)
SILENT_EVENTS = frozenset({"scale_factor", "highlight"})

_PATCHES = Patches()


def _model_class():
    try:
        from napari._qt.containers.qt_layer_model import QtLayerListModel
    except ImportError:  # another napari layout: nothing to patch
        return None
    return QtLayerListModel if hasattr(QtLayerListModel, "_process_event") else None


def _process_event(self, event) -> None:
    if getattr(event, "type", None) in SILENT_EVENTS:
        return
    _PATCHES.original("_process_event")(self, event)


def install() -> bool:
    """Make napari's layer list model ignore :data:`SILENT_EVENTS` (idempotent; models that
    exist already follow too, as napari looks the handler up by name on every event).
    Returns whether it is installed (False on a napari this module does not know)."""
    cls = _model_class()
    if cls is None:
        return False
    _PATCHES.swap(cls, "_process_event", _process_event)
    return True


def uninstall() -> None:
    """Restore napari's own handler (tests compare both)."""
    _PATCHES.restore()
