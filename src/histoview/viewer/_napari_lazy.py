"""napari's per-layer controls and spare visuals built when first needed, not on insertion.

Inserting a layer into napari 0.9 costs the main thread ~150-250 ms on a 2-core CPU, and
histoview inserts many: an overlay per explanation, and for the compare view's side by side
a tissue and an outline per panel, hidden. Two parts of that cost build things that are
usually never used:

* **the layer controls.** ``QtLayerControlsContainer._add`` builds the whole controls panel
  of every inserted layer (for an image: sliders, the colour-map box, the blending and
  interpolation boxes; ~40-60 ms), although the container only ever shows the controls of
  the selected layer, and histoview inserts its layers without selecting them.
* **the spare visuals.** Each image layer's ``ImageLayerNode`` makes three vispy nodes: the
  image, a tiled image for 2D data larger than the GPU's largest texture, and a volume for
  3D display (~10-15 ms each). A 2D overlay only ever draws the first.

:func:`install` makes the container keep its controls in a dictionary that builds a layer's
panel the first time it is asked for (when the layer is selected, or when code reads
``widgets[layer]``), ``_add`` build nothing and ``_remove`` skip a layer whose panel was never
built; and makes ``ImageLayerNode`` record how napari would build its tiled-image and volume
nodes and build each on first use (``get_node`` asks for it when the data outgrows one
texture or the view turns 3D). What a user sees does not change. Each part patches only a
napari it knows (0.9's names); on any other it changes nothing.
"""

from __future__ import annotations

import weakref

from ._patching import Patches

_PATCHES = Patches()
_NEEDED = ("_add", "_remove", "_populate")


def _container_module():
    try:
        from napari._qt.layer_controls import qt_layer_controls_container as module
    except ImportError:  # another napari layout: nothing to patch
        return None
    cls = getattr(module, "QtLayerControlsContainer", None)
    if cls is None or not all(hasattr(cls, n) for n in _NEEDED):
        return None
    if not hasattr(module, "create_qt_layer_controls"):
        return None
    return module


class LazyControls(dict):
    """``{layer: controls}`` of one container; a missing layer's controls are built, added
    to the container's stack and kept on first lookup."""

    def __init__(self, container, built=()):
        super().__init__(built)
        self._container = weakref.ref(container)

    def __missing__(self, layer):
        container = self._container()
        if container is None:  # the container is gone: napari's own KeyError
            raise KeyError(layer)
        controls = _container_module().create_qt_layer_controls(layer)
        controls.ndisplay = container.viewer.dims.ndisplay
        container.addWidget(controls)
        self[layer] = controls
        return controls


def _lazy(container) -> LazyControls:
    widgets = container.widgets
    if not isinstance(widgets, LazyControls):
        widgets = container.widgets = LazyControls(container, widgets)
    return widgets


def _add(self, event) -> None:
    # napari's own _add returns at once when every selection gets dynamic controls; so does
    # this one, which in any case builds nothing until the layer is selected
    _lazy(self)


def _remove(self, event) -> None:
    if event.value in _lazy(self):
        _PATCHES.original("_remove")(self, event)


def _populate(self) -> None:
    # no event argument, as napari's own: napari passes the event to a handler that takes one
    _lazy(self)
    _PATCHES.original("_populate")(self)


# -- spare visuals ---------------------------------------------------------------------------
#: the nodes of napari's ``ImageLayerNode`` built on first use, by the name napari builds them
#: under in ``napari._vispy.layers.image``
_SPARE_NODES = {"_tiledimage_node": "TiledImageNode", "_volume_node": "VolumeNode"}


def _node_module():
    try:
        from napari._vispy.layers import image as module
    except ImportError:  # another napari layout: nothing to patch
        return None
    cls = getattr(module, "ImageLayerNode", None)
    if cls is None or not hasattr(cls, "get_node"):
        return None
    if vars(cls).get("__getattr__", _node_getattr) is not _node_getattr:  # napari's own
        return None
    if not all(hasattr(module, factory) for factory in _SPARE_NODES.values()):
        return None
    return module


class _Recipe:
    """How napari would have built one node: its class and arguments."""

    def __init__(self, factory, *args, **kwargs):
        self.factory, self.args, self.kwargs = factory, args, kwargs

    def build(self):
        return self.factory(*self.args, **self.kwargs)


def _node_init(self, *args, **kwargs) -> None:
    """napari's own ``ImageLayerNode.__init__``, with the spare nodes' classes standing in
    for recipes while it runs (layers are built on the main thread, one at a time)."""
    from napari._vispy.layers import image as module

    factories = {name: getattr(module, name) for name in _SPARE_NODES.values()}
    for name, factory in factories.items():
        setattr(module, name, lambda *a, _f=factory, **k: _Recipe(_f, *a, **k))
    try:
        _PATCHES.original("ImageLayerNode.__init__")(self, *args, **kwargs)
    finally:
        for name, factory in factories.items():
            setattr(module, name, factory)
    recipes = {}
    for attribute in _SPARE_NODES:
        value = self.__dict__.get(attribute)
        if isinstance(value, _Recipe):
            recipes[attribute] = self.__dict__.pop(attribute)
    self.__dict__["_histoview_recipes"] = recipes


def _node_getattr(self, name: str):
    """Build a spare node the first time it is asked for (only reached when it is missing)."""
    recipes = self.__dict__.get("_histoview_recipes") or {}
    if name in recipes:
        node = recipes.pop(name).build()
        setattr(self, name, node)
        return node
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# -- install ----------------------------------------------------------------------------------
def install() -> bool:
    """Build napari's layer controls on first selection and its image layers' spare nodes
    on first use (idempotent; containers that exist already follow too, as napari looks
    their handlers up by name on every event). Returns whether anything is installed (False
    on a napari this module does not know)."""
    installed = False
    module = _container_module()
    if module is not None:
        cls = module.QtLayerControlsContainer
        for name, replacement in zip(_NEEDED, (_add, _remove, _populate), strict=True):
            _PATCHES.swap(cls, name, replacement)
        installed = True
    nodes = _node_module()
    if nodes is not None:
        cls = nodes.ImageLayerNode
        if "ImageLayerNode.__init__" not in _PATCHES:
            _PATCHES.swap(cls, "__init__", _node_init, key="ImageLayerNode.__init__")
            cls.__getattr__ = _node_getattr  # kept after uninstall: nodes keep their recipes
        installed = True
    return installed


def uninstall() -> None:
    """Restore napari's own handlers and ``ImageLayerNode`` (tests compare both). Containers
    keep their lazy dictionaries, and nodes their recipes, which still build on first use."""
    _PATCHES.restore()
