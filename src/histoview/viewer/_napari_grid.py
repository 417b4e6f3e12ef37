"""napari's grid placement in linear time: the same answers as napari's own, computed once.

napari 0.9's ``GridCanvas.contents_at(position, layers)`` calls ``position(i, layers)`` for
every layer, and each ``position`` call recomputes the visible layers and the viewbox groups
of the whole list, so ``iter_viewboxes`` costs O(viewboxes x layers^2). napari's canvas calls
``iter_viewboxes`` whenever it places canvas overlays (layer titles, colour bars), once per
layer during a scene update: with the compare view's 10 panels (~40 layers) one switch to
side by side spent 1.3-2.8 s there on a 2-core CPU (napari issue 8421 reports the same
slowdown of grid mode with many layers).

:func:`install` replaces ``GridCanvas.contents_at`` and ``GridCanvas.iter_viewboxes`` by
versions that group all layers in one pass over the list, with napari's own rules (its
``actual_shape``, ``_viewbox_groups`` and ``_effective_indices``): the same viewboxes with
the same layer indices in the same order (``tests/test_napari_grid.py`` compares both on
random layer lists). It patches only a napari whose ``GridCanvas`` has those helpers (napari
0.9's grid); on any other napari it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ._patching import Patches

_PATCHES = Patches()
_NEEDED = ("actual_shape", "position", "contents_at", "iter_viewboxes")
_HELPERS = ("_viewbox_groups", "_effective_indices")


def _grid_class():
    try:
        from napari.components.grid import GridCanvas
    except ImportError:  # another napari layout: nothing to patch
        return None
    if not all(hasattr(GridCanvas, n) for n in _NEEDED + _HELPERS):
        return None
    return GridCanvas


def viewbox_contents(grid, layers: Sequence) -> dict[tuple[int, int], tuple[int, ...]]:
    """``{(row, col): layer indices}`` of every non-empty viewbox of ``grid``: what napari's
    ``grid.contents_at((row, col), layers)`` returns, for all viewboxes in one pass (hidden
    layers at ``(-1, -1)``, as napari's ``position`` places them)."""
    n = len(layers)
    if not grid.enabled or not n:
        return {(0, 0): tuple(range(n))} if n else {}
    visible = grid._effective_indices(layers)
    hidden = sorted(set(range(n)) - set(visible))
    out: dict[tuple[int, int], list[int]] = {(-1, -1): hidden} if hidden else {}
    if not visible:
        return {pos: tuple(idx) for pos, idx in out.items()}
    rows, cols = grid.actual_shape(layers)
    group_of, occupied = grid._viewbox_groups(layers)
    rank = {g: k for k, g in enumerate(occupied)}
    for i in visible:
        k = rank[group_of[i]] % (rows * cols)
        out.setdefault((k // cols, k % cols), []).append(i)
    return {pos: tuple(idx) for pos, idx in out.items()}


def _contents_at(self, position: tuple[int, int], layers: Sequence) -> tuple[int, ...]:
    return viewbox_contents(self, layers).get(tuple(position), ())


def _iter_viewboxes(self, layers: Sequence) -> Iterator[tuple[tuple[int, int], tuple[int, ...]]]:
    contents = viewbox_contents(self, layers)
    for row, col in np.ndindex(self.actual_shape(layers)):
        yield (row, col), contents.get((row, col), ())


def install() -> bool:
    """Use the one-pass grid placement in napari's ``GridCanvas`` (idempotent); returns
    whether it is installed (False on a napari whose grid this module does not know)."""
    cls = _grid_class()
    if cls is None:
        return False
    _PATCHES.swap(cls, "contents_at", _contents_at)
    _PATCHES.swap(cls, "iter_viewboxes", _iter_viewboxes)
    return True


def uninstall() -> None:
    """Restore napari's own ``contents_at`` and ``iter_viewboxes`` (tests compare both)."""
    _PATCHES.restore()
