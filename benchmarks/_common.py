"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pointing_game(dense: np.ndarray, mask: np.ndarray) -> bool:
    """Hit when the map's maximum (centre of the arg-max region) lies in the ground-truth mask."""
    peak = dense >= dense.max()
    rows, cols = np.nonzero(peak)
    r, c = int(np.median(rows)), int(np.median(cols))
    return bool(mask[r, c])


def map_auc(dense: np.ndarray, mask: np.ndarray) -> float:
    """Pixel-level ROC AUC of a map against a boolean mask."""
    from histoview.training.metrics import roc_auc

    return roc_auc(mask.reshape(-1), dense.reshape(-1))


def top_precision(dense: np.ndarray, mask: np.ndarray, fraction: float = 0.1) -> float:
    """Share of ground truth among the map's top ``fraction`` of pixels (ties at the cut
    included; the share of the mask itself is what a random map gets)."""
    values, truth = np.asarray(dense).reshape(-1), np.asarray(mask, bool).reshape(-1)
    k = max(1, int(round(fraction * values.size)))
    cut = np.partition(values, values.size - k)[values.size - k]
    return float(truth[values >= cut].mean())


def tissue_tiles(src, proc, pixel_size_um: float, tissue, n: int):
    """``n`` tissue tiles of open slide ``src`` for slide processor ``proc``, spread evenly
    over the tissue of its grid (``pixel_size_um``: the model's), read into memory.

    Returns ``(grid, boxes, tiles, read_cpu_s)``: the whole grid, the picked tiles' boxes,
    their pixels stacked and the CPU seconds per tile the reading took (all threads).
    """
    import time

    from histoview.explain.slide_grid import make_grid

    grid = make_grid(
        (0, 0, *src.shape[:2]),
        pixel_size_um=pixel_size_um,
        level0_pixel_size_um=src.pixel_size_um,
        tile_size=proc.tile_size,
        overlap=proc.overlap,
        tissue=tissue,
    )
    every = grid.tissue_indices()
    pick = every[np.linspace(0, len(every) - 1, min(n, len(every))).astype(int)]
    boxes = [grid.box(i) for i in pick]
    t = proc.tile_size
    t0 = time.process_time()
    tiles = np.stack([src.read_rect(b.level0[:2], (t, t), grid.pixel_size_um) for b in boxes])
    return grid, boxes, tiles, (time.process_time() - t0) / len(boxes)
