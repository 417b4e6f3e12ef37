"""Tiles of the phantom slide's pyramid, in the order the TIFF writer asks for them.

``histoview.io.write_pyramidal_tiff`` asks ``tile_fn(level, row, col, size)`` for the tiles of
level 0 row by row, then those of level 1, and so on. :class:`_PyramidTiles` answers:

* level 0: the slide is rendered one band of blocks (``BLOCK`` render pixels high, the whole
  width) at a time; with ``upsample`` 2 (level 0 at 0.25 um/px, rendered at 0.5) a level-0
  tile is the band upsampled twice (linear, at pixel centres: weights 3/4 and 1/4), else the
  band itself;
* level 1 is the render itself (upsample 2) or the 2 x 2 mean of level 0 (upsample 1), and
  every further level the 2 x 2 mean of the one above: while a level is written, its rows go
  to a temporary file (in the output's folder, deleted when closed) which the next level
  reads back a strip at a time. No level is ever re-rendered, and none is held whole in
  memory: the band (~77 MB for a 50,000 px wide slide), one strip per level and one block's
  work are.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

BLOCK = 1024


def level_shapes(shape, min_size=1024):
    """The pyramid's level shapes, as ``write_pyramidal_tiff`` makes them."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) // 2 >= min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _upsample2(a: np.ndarray) -> np.ndarray:
    """(h + 2, w + 2, 3) uint8 with a 1 px border -> (2h, 2w, 3): linear interpolation at the
    centres of the finer pixels (weights 3/4, 1/4 per axis), rounded."""
    a = a.astype(np.uint16)
    mid = 3 * a[1:-1]
    rows = np.empty((2 * (a.shape[0] - 2), a.shape[1], 3), np.uint16)
    rows[0::2], rows[1::2] = mid + a[:-2], mid + a[2:]
    mid = 3 * rows[:, 1:-1]
    out = np.empty((rows.shape[0], 2 * (a.shape[1] - 2), 3), np.uint16)
    out[:, 0::2], out[:, 1::2] = mid + rows[:, :-2], mid + rows[:, 2:]
    out += 8
    out >>= 4
    return out.astype(np.uint8)


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2 x 2 mean (rounded) of an (h, w, 3) uint8 strip; an odd last row/column is repeated."""
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]], 0)
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], 1)
    s = a[0::2, 0::2].astype(np.uint16) + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


class _PyramidTiles:
    """``tile_fn`` for ``write_pyramidal_tiff`` (module docstring); use as a context manager
    (closes the temporary files)."""

    def __init__(self, renderer, shape0, upsample, tile, folder: Path, progress=None):
        if tile % (2 * upsample) or BLOCK % (tile // upsample):
            raise ValueError(f"tile {tile} must divide {BLOCK * upsample} and be even")
        self.r, self.u, self.tile = renderer, int(upsample), int(tile)
        self.shapes = level_shapes(shape0)
        self.rshape = renderer.lay.shape
        self.tmp = {
            k: tempfile.TemporaryFile(dir=folder, prefix=".phantom-slide-level")
            for k in range(1, len(self.shapes))
        }
        self.band_row, self.band = None, None
        self.strip_key, self.strip = None, None
        self.progress = progress
        self.n_bands = -(-self.rshape[0] // BLOCK)
        self.white = np.full((tile, tile, 3), 255, np.uint8)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.tmp.values():
            f.close()

    # -- level 0 ------------------------------------------------------------------------------
    def _band_for(self, rr: int):
        """The band of render rows holding render row ``rr`` (with a 1 px border)."""
        b = rr // BLOCK
        if b != self.band_row:
            if self.band_row is not None:
                self.r.forget_above(b * BLOCK - self.r.halo)
            hr, wr = self.rshape
            self.band = None  # let the old band go before the new one is made
            band = np.empty((BLOCK + 2, wr + 2, 3), np.uint8)
            for c in range(0, wr, BLOCK):
                w = min(BLOCK, wr - c)
                band[:, c : c + w + 2] = self.r.render(b * BLOCK - 1, c - 1, BLOCK + 2, w + 2)
            self.band_row, self.band = b, band
            if self.progress is not None:
                self.progress(b + 1, self.n_bands)
        return self.band, b * BLOCK - 1

    def _append(self, level, a):
        if level in self.tmp:
            self.tmp[level].write(np.ascontiguousarray(a).tobytes())

    def _level0(self, r, c):
        u, t = self.u, self.tile
        rr, cc, n = r // u, c // u, t // u
        band, top = self._band_for(rr)
        i = rr - top
        if c == 0:  # the first tile of a row: pass its rows on to level 1
            h = min(n, self.rshape[0] - rr)
            w = self.rshape[1]
            rows = band[i : i + h, 1 : w + 1]
            if u == 2:
                self._append(1, rows)
            else:
                self._append(1, _downsample2(rows[: min(t, self.shapes[0][0] - r)]))
        if u == 2:
            out = _upsample2(band[i - 1 : i + n + 1, cc : cc + n + 2])
        else:
            out = band[i : i + n, cc + 1 : cc + n + 1]
        return self._pad(out, self.shapes[0], r, c)

    # -- levels >= 1 --------------------------------------------------------------------------
    def _strip(self, level, r):
        if self.strip_key != (level, r):
            h, w = self.shapes[level]
            rows = min(self.tile, h - r)
            f = self.tmp[level]
            f.seek(r * w * 3)
            data = np.frombuffer(f.read(rows * w * 3), np.uint8)
            if data.size != rows * w * 3:
                raise RuntimeError(f"level {level}: temporary pyramid file ended early")
            self.strip = data.reshape(rows, w, 3)
            self.strip_key = (level, r)
            self._append(level + 1, _downsample2(self.strip))
        return self.strip

    def _pad(self, a, shape, r, c):
        t = self.tile
        h, w = min(t, shape[0] - r), min(t, shape[1] - c)
        if a.shape[:2] == (t, t) and h == t and w == t:
            return a
        out = self.white.copy()
        out[:h, :w] = a[:h, :w]
        return out

    def __call__(self, level: int, r: int, c: int, size: int) -> np.ndarray:
        if size != self.tile:
            raise ValueError(f"tile size {size} is not the {self.tile} this pyramid was made for")
        if level == 0:
            return self._level0(r, c)
        strip = self._strip(level, r)
        return self._pad(strip[:, c : c + size], self.shapes[level], r, c)
