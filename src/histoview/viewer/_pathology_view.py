"""What a pathologist expects of the viewer once a histoview dock is open.

* napari's scale bar on, in micrometres, when an image's pixel size is known (histoview's
  reader gives such layers a scale in µm, so the cursor position in the status bar reads in
  µm too; :mod:`histoview.viewer._scale_bar`, which the reader uses too);
* keyboard shortcuts (:data:`SHORTCUTS`): run and cancel the last-used explanation dock,
  step to the next or previous overlay, show or hide the current overlay;
* the view re-fitted after the dock has taken its room on the side (:func:`fit_while_settling`:
  the canvas reaches its new size a few event-loop turns after the dock opens);
* zooming that does not repaint every row of napari's layer list on every step, layer
  controls and spare visuals built only when first needed, shader text work done once per
  source, and the canvas's text glyphs made ahead of time (:func:`prepare_canvas`: the
  hooks here into napari's and vispy's private code).

:func:`install` does this once per viewer, the rest through napari's public API.
"""

from __future__ import annotations

import weakref

from histoview.viewer._layer_updates import run_key_of, show_run_alone
from histoview.viewer._scale_bar import follow_scale_bar

#: key (napari's notation) -> what it does
SHORTCUTS = {
    "Control-Shift-E": "explain with the last-used histoview dock",
    "Control-Shift-X": "cancel that explanation",
    "Control-Shift-Down": "next overlay (only it shown)",
    "Control-Shift-Up": "previous overlay (only it shown)",
    "Control-Shift-V": "show / hide the current overlay",
}

#: seconds after a dock opens during which the view follows the canvas's new size
SETTLE_S = 2.0

_INSTALLED: weakref.WeakSet = weakref.WeakSet()
_SETTLING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> _SettlingFit
_LAST_DOCK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def overlays(viewer) -> list:
    """The explanation layers (heatmaps and nuclei points), bottom to top."""
    return [lay for lay in viewer.layers if "histoview_explanation" in lay.metadata]


def show_only(viewer, step: int) -> None:
    """Make the overlay ``step`` places after the current one the only one shown."""
    layers = overlays(viewer)
    if not layers:
        return
    active = viewer.layers.selection.active
    index = layers.index(active) if active in layers else (-1 if step > 0 else 0)
    target = layers[(index + step) % len(layers)]
    key = run_key_of(target)
    if key is None:  # an overlay some other way made: only its own visibility
        for lay in layers:
            lay.visible = lay is target
    else:  # with its graph edges and outlines; other runs' hidden with theirs
        show_run_alone(viewer, key)
    viewer.layers.selection.active = target


def toggle_current(viewer) -> None:
    active = viewer.layers.selection.active
    if active is not None and "histoview_explanation" in active.metadata:
        active.visible = not active.visible


class _SettlingFit:
    """The view fitted to the layers, again on each canvas size change until ``deadline``
    (:func:`fit_while_settling`), and no more once the camera has moved since the last fit."""

    def __init__(self, viewer, deadline: float):
        from histoview.viewer._compat import canvas_size_event

        self.viewer, self.deadline = weakref.ref(viewer), deadline
        self.size_event = canvas_size_event(viewer)
        self.camera = None  # the camera as the last fit left it
        self.stopped = False
        if self.size_event is not None:
            self.size_event.connect(self.fit)

    def _camera(self, viewer) -> tuple:
        camera = getattr(viewer, "scene", viewer).camera  # napari 0.9: viewer.scene.camera
        return (float(camera.zoom), tuple(map(float, camera.center)))

    def fit(self, _event=None) -> None:
        import time

        viewer = self.viewer()
        if self.stopped or viewer is None:
            return
        moved = self.camera is not None and self._camera(viewer) != self.camera
        if moved or time.monotonic() > self.deadline:
            self.stop()
            return
        viewer.reset_view()
        self.camera = self._camera(viewer)

    def stop(self) -> None:
        if not self.stopped and self.size_event is not None:
            self.size_event.disconnect(self.fit)
        self.stopped = True


def fit_while_settling(viewer, settle_s: float = SETTLE_S) -> None:
    """Fit the view to the layers after a dock's layout, and again each time the canvas
    changes size in the next ``settle_s`` seconds (napari lays out a new dock over a few
    event-loop turns and keeps the zoom it had on the wider canvas), unless the camera has
    moved since the last fit: a user who zoomed or panned meanwhile keeps that view."""
    import time

    from qtpy.QtCore import QTimer

    previous = _SETTLING.get(viewer)
    if previous is not None:
        previous.stop()
    # kept here: napari's events and Qt's timers hold bound methods weakly
    settling = _SETTLING[viewer] = _SettlingFit(viewer, time.monotonic() + settle_s)
    QTimer.singleShot(0, settling.fit)  # after the dock has been laid out
    QTimer.singleShot(int(settle_s * 1000) + 50, settling.stop)


def remember_dock(viewer, dock) -> None:
    """``dock`` (an explanation widget) is the one the run/cancel shortcuts act on."""
    _LAST_DOCK[viewer] = dock


def prepare_canvas() -> None:
    """What every histoview dock does to napari's canvas when it opens: zoom steps that do
    not repaint the layer list (:mod:`~histoview.viewer._napari_rows`), layer controls and
    spare visuals built when first needed (:mod:`~histoview.viewer._napari_lazy`), vispy's
    shader text work kept per source (:mod:`~histoview.viewer._vispy_shaders`), each font's
    glyph filter uploaded once (:mod:`~histoview.viewer._vispy_text`), and the text glyphs
    made ahead of time (:mod:`~histoview.viewer._glyphs`)."""
    from histoview.viewer import _glyphs, _napari_lazy, _napari_rows, _vispy_shaders, _vispy_text

    _napari_rows.install()
    _napari_lazy.install()
    _vispy_shaders.install()
    _vispy_text.install()
    _glyphs.warm()


def install(viewer, dock=None) -> None:
    """Scale bar, shortcuts and a re-fit of the view for ``viewer`` (once per viewer)."""
    prepare_canvas()
    if dock is not None:
        remember_dock(viewer, dock)
    fit_while_settling(viewer)
    follow_scale_bar(viewer)
    if viewer in _INSTALLED:
        return
    _INSTALLED.add(viewer)

    def run(_viewer=None):
        dock = _LAST_DOCK.get(viewer)
        if dock is not None:
            dock.run()

    def cancel(_viewer=None):
        dock = _LAST_DOCK.get(viewer)
        if dock is not None:
            dock.cancel()

    actions = {
        "Control-Shift-E": run,
        "Control-Shift-X": cancel,
        "Control-Shift-Down": lambda _v=None: show_only(viewer, 1),
        "Control-Shift-Up": lambda _v=None: show_only(viewer, -1),
        "Control-Shift-V": lambda _v=None: toggle_current(viewer),
    }
    for key, action in actions.items():
        viewer.bind_key(key, action, overwrite=True)
