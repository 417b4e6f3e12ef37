"""Write tiled pyramidal (Big)TIFFs, e.g. to make test slides or save a stitched image.

Levels are written as SubIFDs of the full-resolution page (the layout
OME-TIFF and QuPath use), each a 2x downsample of the previous, tiled and
compressed. Level 0 can come from an array or from a function returning tiles,
so a 50,000 x 50,000 test slide is written without holding it in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray | None = None,
    *,
    shape: tuple[int, int] | None = None,
    tile_fn: Callable[[int, int, int, int], np.ndarray] | None = None,
    tile: int = 512,
    pixel_size_um: float | None = None,
    min_size: int = 1024,
    compression: str = "zlib",
) -> None:
    """Write an RGB pyramidal BigTIFF.

    Args:
        path: output file.
        image: (H, W, 3) uint8 level 0, or None with ``shape`` and ``tile_fn``.
        shape: (H, W) of level 0 when ``image`` is None.
        tile_fn: ``tile_fn(level, row, col, size) -> (size, size, 3) uint8`` for
            the tile whose top-left corner is (row, col) in that level's pixels.
        tile: tile edge in pixels.
        pixel_size_um: written as TIFF resolution (pixels per centimetre).
        min_size: stop adding levels once the longer side is below this.
        compression: tifffile compression name.
    """
    import tifffile

    if image is not None:
        image = np.asarray(image)
        shape = image.shape[:2]

        def tile_fn(level, r, c, size, _cache={}):  # noqa: B006 - per-call cache of levels
            if level not in _cache:
                _cache[level] = image[:: 2**level, :: 2**level]
            a = _cache[level][r : r + size, c : c + size]
            if a.shape[:2] != (size, size):
                a = np.pad(a, ((0, size - a.shape[0]), (0, size - a.shape[1]), (0, 0)))
            return a

    if shape is None or tile_fn is None:
        raise ValueError("give an image, or a shape and a tile function")
    shapes = [tuple(shape)]
    while max(shapes[-1]) // 2 >= min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))

    def tiles(level: int, lshape):
        for r in range(0, lshape[0], tile):
            for c in range(0, lshape[1], tile):
                yield tile_fn(level, r, c, tile)

    res = None
    if pixel_size_um:
        res = (1e4 / pixel_size_um, 1e4 / pixel_size_um)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level, lshape in enumerate(shapes):
            kwargs = dict(
                shape=(*lshape, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
            )
            if level == 0:
                kwargs["subifds"] = len(shapes) - 1
                if res:
                    kwargs.update(resolution=res, resolutionunit="CENTIMETER")
            else:
                kwargs["subfiletype"] = 1
            tw.write(tiles(level, lshape), **kwargs)
