"""Write maps and masks as tiled pyramidal OME-TIFFs that napari, QuPath and histoview overlay
in place.

:func:`write_ome_tiff` takes any array-like (NumPy, zarr, dask) of shape (H, W) or (H, W, C)
and writes it block by block, never whole:

* **level 0** is read from the source in blocks of one tile row's height and as many tiles'
  width as fit :data:`BLOCK_BYTES`; each block's tiles go to the file at once;
* **lower levels** (OME-TIFF's layout: SubIFDs of the full-resolution page, ``NewSubfileType``
  1) are each the 2 x 2 mean of the level above (an odd last row or column is averaged over
  the pixels it has; NaNs are left out of the mean, so a map with undone tiles keeps its done
  values), made from each block as it is written and kept for the next level in memory when
  small (:data:`LEVEL_IN_MEMORY_BYTES`), else in a temporary zarr store beside the output;
  levels are added until the longer side is at most :data:`PYRAMID_MIN_SIZE` pixels;
* **metadata**: OME-XML with ``PhysicalSizeX/Y`` in ``µm`` (the level-0 pixel size), channel
  names, the position on the slide (``Plane`` ``PositionX/Y`` in ``µm``, for a map of a
  region) and the caller's ``metadata`` as a ``MapAnnotation`` (key/value pairs); the TIFF
  resolution tags of every level say the same (pixels per centimetre) for readers without OME;
* tiles of ``tile`` x ``tile`` pixels, zlib (deflate) compressed: lossless, and read by
  every TIFF reader (Bio-Formats/QuPath, libtiff, tifffile);
* the file is written through :func:`histoview.io.files.atomic_write`: whole or absent, and an
  existing file is replaced only with ``overwrite=True`` (else the next free numbered name).

Layouts: (H, W) is one channel (axes ``YX``); (H, W, 3) ``uint8`` is an RGB image (``YXS``)
unless three ``channel_names`` are given; any other (H, W, C) is C channels, one plane each
(``CYX``, the OME layout of channel stacks). Data types: ``float32`` (``float64`` and
``float16`` are stored as ``float32``), ``uint8``, ``uint16``, and ``bool`` stored as
``uint8`` 0/1.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["BLOCK_BYTES", "LEVEL_IN_MEMORY_BYTES", "PYRAMID_MIN_SIZE", "write_ome_tiff"]

#: levels are added until the longer side of the last one is at most this many pixels
PYRAMID_MIN_SIZE = 256
#: largest block (bytes) read from the source at once
BLOCK_BYTES = 32 * 2**20
#: a lower level up to this size (bytes) is kept in memory until written, else on disk (zarr)
LEVEL_IN_MEMORY_BYTES = 64 * 2**20
#: above this many uncompressed bytes the file is a BigTIFF (classic TIFF offsets are 32-bit)
BIGTIFF_ABOVE = 2**31

_DTYPES = {
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.uint8): np.dtype(np.uint8),
    np.dtype(np.uint16): np.dtype(np.uint16),
    np.dtype(np.bool_): np.dtype(np.uint8),
}


def write_ome_tiff(
    path: str | os.PathLike,
    source,
    *,
    pixel_size_um: float | tuple[float, float],
    channel_names: Sequence[str] | None = None,
    tile: int = 512,
    overwrite: bool = False,
    metadata: Mapping[str, object] | None = None,
    origin_um: tuple[float, float] | None = None,
    resampling: str = "mean",
) -> Path:
    """Write ``source`` as a tiled pyramidal OME-TIFF (module docstring); returns its path.

    Args:
        path: the wanted file name (``<stem>.ome.tif`` by convention).
        source: array-like of shape (H, W) or (H, W, C) with ``shape``, ``dtype`` and
            NumPy-style slicing (numpy, zarr, dask); read in blocks of at most
            :data:`BLOCK_BYTES`, never whole.
        pixel_size_um: micrometres per pixel of ``source`` (square), or (y, x).
        channel_names: one name per channel (one for (H, W) and RGB); None writes none.
        tile: tile edge in pixels, a multiple of 16 (smaller images get one tile).
        overwrite: replace an existing file at ``path``; else a numbered name is used
            (``x.ome.tif`` -> ``x-1.ome.tif``) and the existing file is untouched.
        metadata: key/value pairs stored as an OME ``MapAnnotation`` (values that are not
            strings are stored as JSON).
        origin_um: (y, x) micrometres of the image's top-left corner on the slide it belongs
            to (a map of a region), stored as OME ``Plane`` ``PositionY/X``; None writes none.
        resampling: ``"mean"`` (2 x 2 mean, for maps and masks) or ``"nearest"`` (the
            top-left pixel of each 2 x 2 block, for label maps whose values are classes).

    Returns:
        Where the file landed (``path``, or its numbered neighbour).

    Raises:
        ValueError: bad shape, pixel size, tile, channel names or resampling.
        TypeError: a data type other than those of the module docstring.
    """
    import tifffile

    shape = tuple(int(v) for v in source.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"source must be (H, W) or (H, W, C) with no empty axis, not {shape}")
    in_dtype = np.dtype(source.dtype)
    if in_dtype not in _DTYPES:
        kinds = ", ".join(sorted(str(d) for d in _DTYPES))
        raise TypeError(f"cannot write {in_dtype} data as OME-TIFF; give one of {kinds}")
    dtype = _DTYPES[in_dtype]
    ps_y, ps_x = _pixel_size_yx(pixel_size_um)
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 pixels, not {tile}")
    if resampling not in ("mean", "nearest"):
        raise ValueError(f"resampling must be 'mean' or 'nearest', not {resampling!r}")
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    names = None if channel_names is None else [str(n) for n in channel_names]
    rgb = (
        len(shape) == 3
        and channels == 3
        and dtype == np.uint8
        and (names is None or len(names) != 3)
    )
    planes = 1 if len(shape) == 2 or rgb else channels
    if names is not None and len(names) != planes:
        raise ValueError(
            f"{len(names)} channel name(s) for {planes} channel(s) of a {shape} {in_dtype} image"
        )
    tile = min(tile, 16 * math.ceil(max(height, width) / 16))
    shapes = [(height, width)]
    while max(shapes[-1]) > PYRAMID_MIN_SIZE:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    samples = 3 if rgb else 1
    nbytes = height * width * channels * dtype.itemsize * 4 // 3
    target = Path(path)

    ome = {
        "axes": "YXS" if rgb else ("YX" if planes == 1 else "CYX"),
        "Name": _stem(target),
        "PhysicalSizeX": ps_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": ps_y,
        "PhysicalSizeYUnit": "µm",
    }
    if names is not None:
        ome["Channel"] = {"Name": names}
    if origin_um is not None:
        oy, ox = (float(v) for v in origin_um)
        ome["Plane"] = {
            "PositionY": [oy] * planes,
            "PositionYUnit": ["µm"] * planes,
            "PositionX": [ox] * planes,
            "PositionXUnit": ["µm"] * planes,
        }
    if metadata:
        ome["MapAnnotation"] = {
            str(k): v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in metadata.items()
        }

    from histoview.io.files import atomic_write

    writer = atomic_write(target, mode=None, overwrite=overwrite)
    with writer as tmp:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
            pyramid = _Pyramid(shapes, planes, samples, dtype, tile, resampling, Path(work))
            with tifffile.TiffWriter(tmp, bigtiff=nbytes > BIGTIFF_ABOVE, ome=True) as tw:
                for level, (h, w) in enumerate(shapes):
                    page_shape = (h, w, 3) if rgb else ((h, w) if planes == 1 else (planes, h, w))
                    options = dict(
                        shape=page_shape,
                        dtype=dtype,
                        tile=(tile, tile),
                        photometric="rgb" if rgb else "minisblack",
                        compression="zlib",
                        resolution=(1e4 / (ps_x * 2**level), 1e4 / (ps_y * 2**level)),
                        resolutionunit="CENTIMETER",
                    )
                    if level == 0:
                        options.update(subifds=len(shapes) - 1, metadata=ome)
                    else:
                        options.update(subfiletype=1, metadata=None)
                    tiles = pyramid.tiles(level, source if level == 0 else None, rgb)
                    tw.write(tiles, **options)
                    pyramid.release(level)
    return writer.path


def _pixel_size_yx(pixel_size_um) -> tuple[float, float]:
    values = np.ravel(np.asarray(pixel_size_um, dtype=float))
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(
            f"pixel_size_um must be a positive number of micrometres (or a (y, x) pair), "
            f"not {pixel_size_um!r}"
        )
    return float(values[0]), float(values[1])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


class _Pyramid:
    """The levels below 0 while the file is written: level k + 1 is filled block by block as
    level k's tiles are yielded, then read back in blocks when its own turn comes."""

    def __init__(self, shapes, planes, samples, dtype, tile, resampling, work: Path):
        self.shapes, self.planes, self.samples = shapes, planes, samples
        self.dtype, self.tile, self.resampling, self.work = dtype, tile, resampling, work
        self.levels: dict[int, object] = {}

    def _store(self, level: int):
        if level not in self.levels:
            h, w = self.shapes[level]
            shape = (self.planes, h, w) + ((self.samples,) if self.samples > 1 else ())
            nbytes = int(np.prod(shape)) * self.dtype.itemsize
            if nbytes <= LEVEL_IN_MEMORY_BYTES:
                self.levels[level] = np.zeros(shape, self.dtype)
            else:
                import zarr

                chunks = (1, self.tile // 2, self.tile) + shape[3:]
                self.levels[level] = zarr.open_array(
                    str(self.work / f"level{level}.zarr"),
                    mode="w",
                    shape=shape,
                    chunks=chunks,
                    dtype=self.dtype,
                )
        return self.levels[level]

    def release(self, level: int) -> None:
        self.levels.pop(level, None)

    def _block_width(self, width: int) -> int:
        bytes_per_column = self.tile * self.samples * 8  # float64 while averaging
        tiles = max(1, BLOCK_BYTES // (bytes_per_column * self.tile))
        return min(width, tiles * self.tile)

    def tiles(self, level: int, source, rgb: bool) -> Iterator[np.ndarray]:
        """Tiles of ``level`` in the file's order (plane, tile row, tile column); level 0 comes
        from ``source``, the others from what the level above left."""
        h, w = self.shapes[level]
        t = self.tile
        bw = self._block_width(w)
        below = level + 1 < len(self.shapes)
        for plane in range(self.planes):
            for r0 in range(0, h, t):
                r1 = min(r0 + t, h)
                for c0 in range(0, w, bw):
                    c1 = min(c0 + bw, w)
                    block = self._read(level, source, plane, r0, r1, c0, c1, rgb)
                    # the level below first: tifffile stops asking once it has the last tile
                    if below:
                        rows, cols = slice(r0 // 2, (r1 + 1) // 2), slice(c0 // 2, (c1 + 1) // 2)
                        self._store(level + 1)[plane, rows, cols] = _halve(
                            block, self.resampling, self.dtype
                        )
                    for tc in range(0, c1 - c0, t):
                        yield np.ascontiguousarray(block[:, tc : tc + t])

    def _read(self, level, source, plane, r0, r1, c0, c1, rgb) -> np.ndarray:
        if level > 0:
            return np.asarray(self.levels[level][plane, r0:r1, c0:c1])
        if len(source.shape) == 2:
            block = source[r0:r1, c0:c1]
        elif rgb:
            block = source[r0:r1, c0:c1, :]
        else:
            block = source[r0:r1, c0:c1, plane]
        block = np.asarray(block)
        if block.dtype == np.bool_:
            return block.astype(np.uint8)
        return block.astype(self.dtype, copy=False)


def _halve(block: np.ndarray, resampling: str, dtype: np.dtype) -> np.ndarray:
    """The 2 x 2 reduction of a (h, w[, s]) block: the mean of each block's pixels (NaNs left
    out; an odd last row or column is its own mean), or its top-left pixel (``"nearest"``)."""
    if resampling == "nearest":
        return block[::2, ::2]
    h, w = block.shape[:2]
    pad = ((0, h % 2), (0, w % 2)) + ((0, 0),) * (block.ndim - 2)
    if h % 2 or w % 2:
        block = np.pad(block, pad, mode="edge")
    x = block.astype(np.float64)
    quads = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, *x.shape[2:])
    if dtype.kind == "f":
        valid = ~np.isnan(quads)
        count = valid.sum(axis=(1, 3))
        total = np.where(valid, quads, 0.0).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / count).astype(dtype)
    mean = quads.mean(axis=(1, 3))
    return np.floor(mean + 0.5).astype(dtype)


def read_map_annotation(path) -> dict[str, str]:
    """The key/value pairs :func:`write_ome_tiff` stored in ``path``'s OME ``MapAnnotation``
    (a histoview map: ``method``, ``model``, ``map``, ``notice``...); {} for any other file."""
    import xml.etree.ElementTree as ET

    import tifffile

    from histoview.io.pixel_size import by_local_tag

    try:
        with tifffile.TiffFile(path) as tf:
            xml = tf.ome_metadata if tf.is_ome else None
        root = ET.fromstring(xml) if xml else None
    except (OSError, ValueError, ET.ParseError, tifffile.TiffFileError):
        return {}
    if root is None:
        return {}
    for el in by_local_tag(root).get("MapAnnotation", [])[:1]:
        return {m.get("K"): m.text or "" for m in by_local_tag(el).get("M", []) if m.get("K")}
    return {}
