"""A stored TIFF level as histoview shows it, read lazily: :class:`LevelView` indexes the
stored array (a memory map or tifffile's zarr store) with numpy-style keys (integers and
slices, any step), reads only the stored rows and columns under the key, moves the sample
axis last, turns the block as the Orientation tag says (:data:`ORIENTATIONS`) and converts
its colour model. How a level is stored (:class:`~histoview.io.tiff_layout.TiffLayout`) and
which array backs it: :mod:`histoview.io.tiff_layout`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ORIENTATIONS", "LevelView"]

#: Orientation tag (TIFF 274, also EXIF 0x0112) -> (transpose, flip rows, flip columns):
#: shown = flip(transpose(stored)), the transpose (rows <-> columns) first.
ORIENTATIONS = {
    1: (False, False, False),  # top-left: as stored
    2: (False, False, True),  # top-right: mirrored left-right
    3: (False, True, True),  # bottom-right: turned 180 degrees
    4: (False, True, False),  # bottom-left: mirrored top-bottom
    5: (True, False, False),  # left-top: transposed
    6: (True, False, True),  # right-top: turned 90 degrees clockwise
    7: (True, True, True),  # right-bottom: transverse
    8: (True, True, False),  # left-bottom: turned 90 degrees counter-clockwise
}


class LevelView:
    """A stored TIFF level as histoview shows it, read lazily.

    ``base`` is the stored array, ``layout`` its :class:`~histoview.io.tiff_layout.TiffLayout`
    (not imported here: the layout module builds views), ``token`` names the source for dask.
    Indexing with integers and slices (any step, Ellipsis) reads the stored rows and columns
    under the key only; ``np.asarray(view)`` reads the whole level.
    """

    def __init__(self, base, layout, token: tuple = ()):
        self._base, self._layout, self._token = base, layout, token
        self.shape, self.dtype = tuple(layout.shape), np.dtype(layout.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self):
        # dask names arrays by a token of their source; without this it would pickle the view,
        # memory map and all (1.2 GB for a 20,000 x 20,000 RGB level)
        return ("histoview.LevelView", *self._token, self.shape, str(self.dtype))

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key):
        key = _expand_key(key, self.ndim)
        picked, ranges = [], []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(n)))
                picked.append(slice(None))
            else:
                i = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
                ranges.append(range(i, i + 1))
                picked.append(0)
        block = self._read(*ranges)
        if self._layout.convert is not None:
            block = self._layout.convert(block)
        if self.ndim == 3:
            picked.append(key[2])
        block = block[tuple(picked)]
        return np.ascontiguousarray(block, dtype=self.dtype.newbyteorder("="))

    def _read(self, rows: range, cols: range) -> np.ndarray:
        """Stored pixels under shown ``rows`` x ``cols``, samples last, turned as shown."""
        transpose, flip_rows, flip_cols = ORIENTATIONS[self._layout.orientation]
        h, w = self.shape[:2]
        rows = _flipped(rows, h) if flip_rows else rows
        cols = _flipped(cols, w) if flip_cols else cols
        stored_rows, stored_cols = (cols, rows) if transpose else (rows, cols)
        (sr, rev_r), (sc, rev_c) = _ascending(stored_rows), _ascending(stored_cols)
        if self._layout.samples_first:
            block = np.moveaxis(np.asarray(self._base[:, sr, sc]), 0, -1)
        else:
            block = np.asarray(self._base[sr, sc])
        if rev_r:
            block = block[::-1]
        if rev_c:
            block = block[:, ::-1]
        return block.swapaxes(0, 1) if transpose else block


def _expand_key(key, ndim: int) -> tuple:
    key = key if isinstance(key, tuple) else (key,)
    for k in key:
        if not (k is Ellipsis or isinstance(k, (slice, int, np.integer))):
            raise TypeError(f"a lazy TIFF level takes integers and slices, not {type(k).__name__}")
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis")
    if n_ellipsis:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    return key + (slice(None),) * (ndim - len(key))


def _flipped(r: range, n: int) -> range:
    """The indices ``n - 1 - i`` for i in ``r``."""
    return range(n - 1 - r.start, n - 1 - r.stop, -r.step)


def _ascending(r: range) -> tuple[slice, bool]:
    """``r`` as a slice with a positive step, and whether the result must then be reversed."""
    if len(r) == 0:
        return slice(0, 0), False
    if r.step > 0:
        return slice(r.start, r.stop, r.step), False
    up = r[::-1]
    return slice(up.start, up.stop, up.step), True
