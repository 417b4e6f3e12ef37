"""Small pyramidal test slides for the slide engine's tests (tests/test_slide_*.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

#: (rows, cols) of the test slide at 0.5 um/px: 2 x 3 tiles of 448 pixels (A-MIL's tile)
SHAPE = (896, 1344)
#: where the two phantoms lie (row, col, height, width), level-0 pixels at 0.5 um/px
PHANTOMS = {"benign": (20, 20, 380, 560), "invasive": (496, 760, 380, 560)}
GLASS = 245


def slide_image(shape=SHAPE) -> np.ndarray:
    """A benign and an invasive phantom on glass, (H, W, 3) uint8 at 0.5 um/px."""
    from histoview.preprocessing.phantom import make_phantom

    canvas = np.full((*shape, 3), GLASS, np.uint8)
    for seed, (label, (r, c, h, w)) in enumerate(PHANTOMS.items()):
        canvas[r : r + h, c : c + w] = make_phantom(label, shape=(h, w), seed=seed + 1).image
    return canvas


def write_slide(
    path: Path, image: np.ndarray | None = None, *, pixel_size_um: float | None = 0.5
) -> Path:
    """``image`` (default :func:`slide_image`) as a tiled (256 px) pyramidal TIFF."""
    from histoview.io.pyramid import write_pyramidal_tiff

    image = slide_image() if image is None else image
    write_pyramidal_tiff(path, image, tile=256, pixel_size_um=pixel_size_um, min_size=256)
    return path


def corrupt_tile(path: Path, out: Path, row: int, col: int) -> Path:
    """A copy of the TIFF ``path`` whose level-0 tile holding pixel (row, col) is garbage."""
    import tifffile

    shutil.copy(path, out)
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        th, tw = page.tilelength, page.tilewidth
        cols = -(-page.imagewidth // tw)
        i = (row // th) * cols + col // tw
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    with open(out, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    return out
