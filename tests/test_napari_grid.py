"""The one-pass grid placement gives napari's own answers (viewer._napari_grid)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from histoview.viewer import _napari_grid  # noqa: E402


def _answers(grid, layers):
    return list(grid.iter_viewboxes(layers)), [
        grid.contents_at((r, c), layers) for r in range(-1, 5) for c in range(-1, 5)
    ]


@pytest.mark.parametrize("seed", range(40))
def test_same_viewboxes_as_napari(seed):
    from napari.components.grid import GridCanvas

    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 30))
    layers = [SimpleNamespace(visible=bool(rng.random() < 0.7)) for _ in range(n)]
    stride = int(rng.choice([-3, -2, -1, 1, 2, 3]))
    shape = tuple(int(v) for v in rng.choice([-1, 1, 2, 3, 4], 2))
    grid = GridCanvas(stride=stride, shape=shape, enabled=bool(rng.random() < 0.85))
    _napari_grid.uninstall()
    try:
        expected = _answers(grid, layers)
        assert _napari_grid.install()
        got = _answers(grid, layers)
    finally:
        _napari_grid.install()
    assert got == expected


def test_one_pass_is_fast():
    """40 layers in 10 panels: napari's own placement reads every layer's visibility
    O(viewboxes x layers^2) times; the one-pass version O(layers) times per call."""
    from napari.components.grid import GridCanvas

    class Counted:
        reads = 0

        @property
        def visible(self):
            Counted.reads += 1
            return True

    layers = [Counted() for _ in range(40)]
    grid = GridCanvas(stride=-4, shape=(2, 5), enabled=True)
    assert _napari_grid.install()
    list(grid.iter_viewboxes(layers))
    assert Counted.reads <= 10 * len(layers)
