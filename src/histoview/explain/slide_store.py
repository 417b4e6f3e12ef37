"""The working store of a whole-slide run: maps merged on disk as tiles finish, resumable.

Predictions stream into a chunked zarr store (TIAToolbox's semantic segmentor merges the same
way), so no map is ever whole in memory. ``<stem>.<method>.zarr/`` holds::

    zarr.json attrs   format, the run's settings (the resume key), the grid, the maps,
                      the skipped tiles {index: reason}, the state ("running" / "finished")
    done              (rows, cols) bool: tiles whose results are in the store
    maps/<name>/acc   (h, w[, C]) float32: sum of weight * value over the tiles that wrote it
    maps/<name>/weight (h, w) float32: sum of the weights
    extras/<name>     (n_tiles, *shape): each tile's extra array (processor.extras)
    final/<name>      (h, w[, C]) float32: the finished map (processor.finalize)
    undo.npz          while a batch is applied: the values it overwrites

**Kill safety** (a write-ahead undo record): before a batch is added, the map blocks it
touches are saved to ``undo.npz`` (written whole, then renamed); then the sums are updated, the
tiles marked done, and ``undo.npz`` removed. A store opened with an ``undo.npz`` left by a
killed run restores those blocks and clears those tiles, so every tile counts exactly once (zarr's local store writes each chunk
to a temporary file and renames it, so a chunk is never half written either).
A store made with other settings is never resumed: :func:`open_store` starts it afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.slide_grid import TileGrid
from histoview.explain.slide_processor import MapSpec, TileBox, TileResult

FORMAT = "histoview-slide-store"
FORMAT_VERSION = 1
#: map chunk edge (pixels)
CHUNK = 256


def _json(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class SlideStore:
    """An opened working store (module docstring). Use :func:`open_store`."""

    def __init__(self, path: Path, group, grid: TileGrid, maps: tuple[MapSpec, ...]):
        self.path, self._group, self.grid = path, group, grid
        self.maps = {m.name: m for m in maps}
        # the name the finished run's files take (explain_slide sets it before finalize: the
        # run stem, or its first free numbered form when an earlier run's files are there)
        self.output_stem: str | None = None
        self._arrays: dict[str, Any] = {}  # opened once: each open reads the array's metadata

    def _array(self, key: str):
        """The store's zarr array ``key`` (made by :func:`open_store`, never replaced), opened
        on first use and kept: zarr reads an array's metadata from disk at every open, a few
        ms that every batch paid several times over."""
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = self._group[key]
        return array

    # -- what the viewer and finalize read -------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._group.attrs["settings"])

    @property
    def done(self):
        """The (rows, cols) bool zarr array of tiles done."""
        return self._array("done")

    def done_indices(self) -> np.ndarray:
        """Indices (row-major) of the tiles whose results are in the store."""
        return np.flatnonzero(self.done[:].reshape(-1))

    @property
    def skipped(self) -> dict[int, str]:
        """Tiles that could not be read: index -> reason."""
        return {int(k): v for k, v in dict(self._group.attrs.get("skipped", {})).items()}

    @property
    def finished(self) -> bool:
        return self._group.attrs.get("state") == "finished"

    def map_pixel_size(self, name: str) -> float:
        """Micrometres per pixel of map ``name``."""
        return self.grid.pixel_size_um * self.maps[name].factor

    def map_origin_um(self) -> tuple[float, float]:
        """(y, x) micrometres of every map's top-left corner from level 0's top-left corner."""
        r, c = self.grid.region[:2]
        return (r * self.grid.level0_pixel_size_um, c * self.grid.level0_pixel_size_um)

    def accumulators(self, name: str):
        """The ``(acc, weight)`` zarr arrays of map ``name``."""
        return self._array(f"maps/{name}/acc"), self._array(f"maps/{name}/weight")

    def blended(self, name: str) -> BlendedMap:
        """Map ``name`` as it stands (weighted mean of the tiles done): a lazy array-like."""
        return BlendedMap(*self.accumulators(name), self.maps[name].fill)

    def iter_blocks(
        self, name: str, rows: int = CHUNK
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """``(row slice, values, weight)`` blocks of ``rows`` map rows of the blended map, top
        to bottom; ``values`` is ``fill`` where the weight is 0."""
        acc, weight = self.accumulators(name)
        fill = self.maps[name].fill
        for r in range(0, acc.shape[0], rows):
            sl = slice(r, min(r + rows, acc.shape[0]))
            yield sl, _divide(acc[sl], weight[sl], fill), weight[sl]

    def extras(self, name: str):
        """The (n_tiles, *shape) zarr array of per-tile extra ``name`` (index = tile index)."""
        return self._array(f"extras/{name}")

    def write_final(
        self,
        name: str,
        fn: Callable[[np.ndarray, np.ndarray, slice], np.ndarray],
        *,
        source: str | None = None,
        channels: int = 1,
    ):
        """Write ``final/<name>`` block by block: ``fn(values, weight, rows)`` of each block of
        map ``source`` (default ``name``; :meth:`iter_blocks`) gives the final block, (h, W) or
        (h, W, channels) float32. Returns the zarr array."""
        source = source or name
        h, w = self.grid.map_shape(self.maps[source].factor)
        shape = (h, w) if channels == 1 else (h, w, channels)
        path = f"final/{name}"
        if path in self._group:
            del self._group[path]
        out = self._group.create_array(
            path, shape=shape, chunks=_chunks(shape), dtype="float32", fill_value=0.0
        )
        for rows, values, weight in self.iter_blocks(source):
            block = np.asarray(fn(values, weight, rows), np.float32)
            if block.shape != (rows.stop - rows.start, *shape[1:]):
                raise ValueError(f"final map {name!r}: block of shape {block.shape} for {shape}")
            out[rows] = block
        return out

    def final(self, name: str):
        return self._group[f"final/{name}"]

    # -- what the engine writes --------------------------------------------------------------
    def add_batch(
        self,
        boxes: list[TileBox],
        results: list[TileResult],
        skipped: dict[int, str],
        *,
        elapsed_s: float,
    ) -> None:
        """Add a batch's results (kill-safe, module docstring) and mark its tiles done; record
        the ``skipped`` tiles (index -> reason)."""
        if len(boxes) != len(results):
            raise ValueError(f"{len(results)} results for {len(boxes)} tiles")
        blocks = {name: self._block(spec, boxes) for name, spec in self.maps.items()}
        blocks = {k: v for k, v in blocks.items() if v is not None}
        undo = {}
        for name, (r0, r1, c0, c1) in blocks.items():
            acc, weight = self.accumulators(name)
            undo[f"{name}/acc"] = acc[r0:r1, c0:c1]
            undo[f"{name}/weight"] = weight[r0:r1, c0:c1]
            undo[f"{name}/box"] = np.array([r0, r1, c0, c1], np.int64)
        undo["tiles"] = np.array([b.index for b in boxes], np.int64)
        self._write_undo(undo)
        for name, (r0, r1, c0, c1) in blocks.items():
            self._accumulate(name, (r0, r1, c0, c1), boxes, results, undo)
        for name, (shape, dtype) in self._extra_specs().items():
            have = [(b.index, r.extras[name]) for b, r in zip(boxes, results) if name in r.extras]
            if have:
                values = np.stack([np.asarray(v, dtype).reshape(shape) for _, v in have])
                self.extras(name).oindex[np.array([i for i, _ in have])] = values
        if boxes:
            ij = np.array([b.grid_rc for b in boxes], np.int64)
            self.done.vindex[ij[:, 0], ij[:, 1]] = True
        attrs = {"elapsed_s": float(elapsed_s)}
        old = dict(self._group.attrs.get("skipped", {}))
        if skipped or old:  # a tile read on a later try is no longer skipped
            done = {str(b.index) for b in boxes}
            attrs["skipped"] = {
                **{k: v for k, v in old.items() if k not in done},
                **{str(k): v for k, v in skipped.items()},
            }
        self._group.attrs.update({k: _json(v) for k, v in attrs.items()})
        (self.path / "undo.npz").unlink()

    def mark_finished(self, summary: dict[str, Any]) -> None:
        self._group.attrs.update({"state": "finished", "summary": _json(summary)})

    @property
    def elapsed_s(self) -> float:
        """Compute time the store's tiles took so far (over resumed runs)."""
        return float(self._group.attrs.get("elapsed_s", 0.0))

    def _extra_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            k: (tuple(v[0]), v[1]) for k, v in dict(self._group.attrs.get("extras", {})).items()
        }

    def _block(self, spec: MapSpec, boxes: list[TileBox]):
        """(r0, r1, c0, c1) map block under the batch's tiles, cut to the map (None: empty)."""
        if not boxes:
            return None
        f, t = spec.factor, self.grid.tile_size // spec.factor
        h, w = self.grid.map_shape(f)
        rc = np.array([b.frame_rc for b in boxes]) // f
        r0, c0 = rc.min(0)
        r1, c1 = np.minimum(rc.max(0) + t, (h, w))
        return (int(r0), int(r1), int(c0), int(c1)) if r1 > r0 and c1 > c0 else None

    def _accumulate(self, name, block, boxes, results, undo) -> None:
        spec = self.maps[name]
        f, t = spec.factor, self.grid.tile_size // spec.factor
        r0, r1, c0, c1 = block
        acc = undo[f"{name}/acc"].astype(np.float64)
        weight = undo[f"{name}/weight"].astype(np.float64)
        for box, res in zip(boxes, results):
            if name not in res.maps:
                continue
            value = np.asarray(res.maps[name], np.float64)
            wt = res.weights.get(name)
            wt = np.ones((t, t)) if wt is None else np.asarray(wt, np.float64)
            if value.shape[:2] != (t, t) or wt.shape != (t, t):
                raise ValueError(
                    f"map {name!r}: a tile's map is {value.shape[:2]} (weights {wt.shape}), "
                    f"expected {(t, t)} (tile {self.grid.tile_size} / factor {f})"
                )
            tr, tc = (v // f - o for v, o in zip(box.frame_rc, (r0, c0)))
            hh, ww = min(t, r1 - r0 - tr), min(t, c1 - c0 - tc)
            if hh <= 0 or ww <= 0:
                continue
            v = value[:hh, :ww]
            finite = np.isfinite(v) if v.ndim == 2 else np.isfinite(v).all(-1)
            wcut = np.where(finite, wt[:hh, :ww], 0.0)  # a NaN is no value: weight 0
            vcut = np.nan_to_num(v)
            wv = vcut * (wcut[..., None] if vcut.ndim == 3 else wcut)
            acc[tr : tr + hh, tc : tc + ww] += wv
            weight[tr : tr + hh, tc : tc + ww] += wcut
        a, wsum = self.accumulators(name)
        a[r0:r1, c0:c1] = acc.astype(np.float32)
        wsum[r0:r1, c0:c1] = weight.astype(np.float32)

    def _write_undo(self, undo: dict[str, np.ndarray]) -> None:
        tmp = self.path / "undo.tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, **undo)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "undo.npz")

    def recover(self) -> list[int]:
        """Undo a batch a killed run left half-applied (module docstring); returns its tiles."""
        path = self.path / "undo.npz"
        if not path.exists():
            return []
        with np.load(path) as undo:
            for name in self.maps:
                if f"{name}/box" in undo:
                    r0, r1, c0, c1 = (int(v) for v in undo[f"{name}/box"])
                    acc, weight = self.accumulators(name)
                    acc[r0:r1, c0:c1] = undo[f"{name}/acc"]
                    weight[r0:r1, c0:c1] = undo[f"{name}/weight"]
            tiles = [int(i) for i in undo["tiles"]]
        if tiles:
            rows, cols = np.divmod(np.array(tiles), self.grid.shape[1])
            self.done.vindex[rows, cols] = False
        path.unlink()
        return tiles


class BlendedMap:
    """A map as it stands, read lazily: ``acc / weight`` (``fill`` where nothing was written)
    for the part indexed. Has ``shape``, ``dtype``, ``ndim`` and ``__getitem__``, so napari and
    numpy take it like an array."""

    def __init__(self, acc, weight, fill: float = 0.0):
        self._acc, self._weight, self._fill = acc, weight, fill
        self.shape, self.dtype, self.ndim = tuple(acc.shape), np.dtype(np.float32), acc.ndim

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        acc = np.asarray(self._acc[key])
        weight = np.asarray(self._weight[key[:2]])
        return _divide(acc, weight, self._fill)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _divide(acc: np.ndarray, weight: np.ndarray, fill: float) -> np.ndarray:
    acc = np.asarray(acc, np.float32)
    weight = np.asarray(weight, np.float32)
    if acc.ndim == weight.ndim + 1:
        weight = weight[..., None]
    weight = np.broadcast_to(weight, acc.shape) if weight.shape != acc.shape else weight
    out = np.full(acc.shape, fill, np.float32)
    np.divide(acc, weight, out=out, where=weight > 0)
    return out


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(CHUNK, max(1, n)) for n in shape[:2]) + tuple(shape[2:])


def open_store(
    path: str | os.PathLike,
    grid: TileGrid,
    *,
    settings: dict[str, Any],
    maps: tuple[MapSpec, ...],
    extras: dict[str, tuple[tuple[int, ...], str]],
    resume: bool = True,
) -> tuple[SlideStore, str]:
    """Open the working store at ``path`` for a run, resuming it when it was made with the same
    ``settings`` and grid (and ``resume``), else making it afresh. Returns ``(store, how)``,
    ``how`` = ``"new"``, ``"resumed"`` or ``"restarted: <why>"``.

    A folder at ``path`` that is not a histoview slide store is never touched: ValueError.
    """
    import zarr

    path = Path(path)
    key = _json({"settings": settings, "grid": grid.describe()})
    how = "new"
    if path.exists():
        try:
            group = zarr.open_group(str(path), mode="r+")
            attrs = dict(group.attrs)
        except Exception:  # noqa: BLE001 - anything unreadable is not ours
            attrs = {}
        if attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path}: exists and is not a histoview slide store; move it away or choose "
                "another output folder"
            )
        same = attrs.get("key") == key and attrs.get("format_version") == FORMAT_VERSION
        if resume and same:
            store = SlideStore(path, group, grid, maps)
            store.recover()
            return store, "resumed"
        how = "restarted: " + ("--restart" if not resume else "made with other settings")
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w")
    for spec in maps:
        h, w = grid.map_shape(spec.factor)
        shape = (h, w) if spec.channels == 1 else (h, w, spec.channels)
        kw = dict(dtype="float32", fill_value=0.0)
        group.create_array(f"maps/{spec.name}/acc", shape=shape, chunks=_chunks(shape), **kw)
        group.create_array(f"maps/{spec.name}/weight", shape=(h, w), chunks=_chunks((h, w)), **kw)
    for name, (shape, dtype) in extras.items():
        full = (grid.n_tiles, *shape)
        per_chunk = (1 << 16) // max(1, int(np.prod(shape)) * 8)
        chunks = (max(1, min(grid.n_tiles, per_chunk)), *shape)
        group.create_array(f"extras/{name}", shape=full, chunks=chunks, dtype=dtype, fill_value=0)
    group.create_array(
        "done", shape=grid.shape, chunks=_chunks(grid.shape), dtype="bool", fill_value=False
    )
    group.attrs.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "key": key,
            "settings": _json(settings),
            "grid": _json(grid.describe()),
            "maps": _json([vars(m) for m in maps]),
            "extras": _json({k: [list(s), d] for k, (s, d) in extras.items()}),
            "skipped": {},
            "state": "running",
        }
    )
    return SlideStore(path, group, grid, maps), how
