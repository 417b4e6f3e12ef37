"""The per-slide patch-embedding cache of MIL models (CLAM's two-stage design), on disk.

An A-MIL run on a slide spends nearly all its time reading tiles and running the feature
extractor; the attention pooling and the head are cheap. The cache keeps what the extractor
gave for every patch of a slide, so explaining the slide again (with another attention head on
the same extractor) or training a head over many slides does not recompute it.

**Key.** An entry is keyed by the slide's content (:func:`histoview.io.content_hash.content_hash`:
a copy under another name hits, a rewritten file does not), the extractor
(:func:`extractor_hash`: its structure and its ``state_dict`` tensors only, so two A-MIL models
that share an extractor but differ in their attention heads share entries) and the patch
settings that decide which patches are cut and how they enter the extractor (model and level-0
pixel sizes, patch and tile size, tile grid and its tissue tiles, region, ``max_background``,
input mean/std, stain normaliser, precision). :func:`entry_key` hashes these ``parts``; the
folder name starts with the slide hash, so ``clear(slide=prefix)`` finds a slide's entries.

**Entry** ``<root>/entries/<slide hash>-<settings hash>/``::

    features.npy  (N, F) float32 (or float16): the embeddings h of the bag's patches, by tile
    tile.npy      (N,) int64: the grid tile (row-major index) each patch came from
    patch_rc.npy  (N, 2) int32: each patch's (row, col) in the region's patch grid
    level0.npy    (N, 2) float64: each patch's top-left (row, col) in level-0 pixels
    tiles.npy     (T,) int64: every tile the run processed (tiles without patches too)
    record.json   the key's parts, shapes, dtype, bytes, created

Embeddings are **float32** by default: a slide replayed from the cache gives the map and
prediction of the uncached run to float64 rounding (the same features through the same layers;
measured on the test slide: map 5e-12 absolute, probabilities 2e-16), so batch reruns, resumes
and comparisons do not depend on what the cache held. The cost: 200k patches x 500 features is
400 MB a slide (a 20 GiB cache holds ~50 such slides; the test slide's 599 patches: 1.2 MB).
``FeatureCache(dtype="float16")`` halves that; its rounding (relative 2^-11 a value)
moved the test slide's probabilities by < 1e-6 and its attention map by < 3e-4 relative (so
not bit for bit); a value beyond float16's range would become infinite, and such an entry is
not kept. An entry of either type serves every reader (the key does not hold the type).

**Atomic, concurrent.** A writer appends each batch's arrays to raw files in its own
temporary folder ``<root>/tmp/`` (the slide's embeddings are never all in memory), turns them
into ``.npy`` files at :meth:`FeatureWriter.commit` and renames the folder into place: a reader
sees a whole entry or none. Two processes (Dask workers) writing the same entry: the second
rename finds the folder there and drops its own copy (the contents are the same). An
aborted (cancelled, failed) run leaves no entry.

**Bounded.** The cache holds at most ``max_bytes`` (default 20 GiB, or
``$HISTOVIEW_FEATURE_CACHE_GB``); after each commit the least recently used entries (by the
``used`` stamp a read touches) go until it fits. An entry is removed by renaming it out of
``entries/`` first, so a reader never sees it half deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "histoview-feature-cache"
FORMAT_VERSION = 1
#: cache size when neither the caller nor ``$HISTOVIEW_FEATURE_CACHE_GB`` sets one
DEFAULT_MAX_GB = 20.0
#: what the embeddings are stored as unless the cache is told otherwise (module docstring)
FEATURE_DTYPE = "float32"
#: the arrays of an entry: name -> (dtype (None: the cache's), trailing shape (None: (F,)))
ARRAYS = {
    "features": (None, None),
    "tile": (np.dtype("<i8"), ()),
    "patch_rc": (np.dtype("<i4"), (2,)),
    "level0": (np.dtype("<f8"), (2,)),
}
_F16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> Path:
    """``$HISTOVIEW_CACHE_DIR/features`` when set, else the user cache folder's ``features``
    (``platformdirs.user_cache_dir("histoview")``, e.g. ``~/.cache/histoview/features``)."""
    base = os.environ.get("HISTOVIEW_CACHE_DIR")
    if base:
        return Path(base) / "features"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("histoview", appauthor=False)) / "features"


def default_max_bytes() -> int:
    """The cache bound: ``$HISTOVIEW_FEATURE_CACHE_GB`` GiB (a number), else 20 GiB."""
    text = os.environ.get("HISTOVIEW_FEATURE_CACHE_GB")
    if not text:
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        gb = float(text)
    except ValueError:
        raise ValueError(
            f"HISTOVIEW_FEATURE_CACHE_GB={text!r}: not a number of GiB (e.g. 20)"
        ) from None
    if gb < 0:
        raise ValueError(f"HISTOVIEW_FEATURE_CACHE_GB={text!r}: must not be negative")
    return int(gb * 2**30)


def extractor_hash(module) -> str:
    """Hex SHA-256 of a torch module's structure (its ``repr``) and its ``state_dict``
    tensors (names, dtypes, shapes, bytes): the same for two models sharing an extractor."""
    import torch

    h = hashlib.sha256(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def entry_key(slide_hash: str, parts: dict[str, Any]) -> str:
    """The entry's folder name: the slide hash and a hash of the other key ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{slide_hash}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


@dataclass
class CachedFeatures:
    """A complete entry, its arrays opened read-only (memory-mapped).

    Attributes:
        key: the entry's folder name.
        path: the entry's folder.
        record: its ``record.json``.
        features, tile, patch_rc, level0, tiles: the arrays (module docstring).
    """

    key: str
    path: Path
    record: dict[str, Any]
    features: np.ndarray
    tile: np.ndarray
    patch_rc: np.ndarray
    level0: np.ndarray
    tiles: np.ndarray

    def tile_range(self, first: int, last: int) -> slice:
        """The rows of patches from tiles ``first..last`` (``tile`` is sorted)."""
        lo = np.searchsorted(self.tile, first, side="left")
        hi = np.searchsorted(self.tile, last, side="right")
        return slice(int(lo), int(hi))


class FeatureCache:
    """The embeddings cache at ``root`` (module docstring).

    Args:
        root: the cache folder (default :func:`default_cache_dir`); made when first written.
        max_bytes: the bound (default :func:`default_max_bytes`).
        dtype: ``"float32"`` (default: bit for bit) or ``"float16"`` (half the bytes) for
            the embeddings this cache writes.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_bytes: int | None = None,
        *,
        dtype: str = FEATURE_DTYPE,
    ):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"feature cache dtype {dtype!r}: float32 or float16")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()
        if self.max_bytes < 0:
            raise ValueError(f"feature cache {self.root}: max_bytes must not be negative")

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str) -> CachedFeatures | None:
        """The complete entry ``key`` (its ``used`` stamp touched), or None."""
        path = self.entries_dir / key
        try:
            record = json.loads((path / "record.json").read_text())
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in (*ARRAYS, "tiles")}
        except (FileNotFoundError, NotADirectoryError):
            return None  # absent, or removed while read: a miss
        except (ValueError, OSError) as exc:
            raise ValueError(f"feature cache entry {path}: unreadable ({exc}); clear it") from None
        _touch(path / "used")
        return CachedFeatures(key, path, record, **arrays)

    def list_entries(self) -> list[dict[str, Any]]:
        """Every complete entry: its record plus ``key``, ``path`` and ``used`` (time)."""
        out = []
        for path in sorted(self.entries_dir.glob("*")) if self.entries_dir.is_dir() else []:
            try:
                record = json.loads((path / "record.json").read_text())
                used = (path / "used").stat().st_mtime
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
            out.append({**record, "key": path.name, "path": str(path), "used": used})
        return out

    def info(self) -> dict[str, Any]:
        """``{"root", "entries", "bytes", "max_bytes", "slides"}``."""
        entries = self.list_entries()
        return {
            "root": str(self.root),
            "entries": len(entries),
            "bytes": int(sum(e["bytes"] for e in entries)),
            "max_bytes": self.max_bytes,
            "slides": len({e["slide"] for e in entries}),
        }

    # -- writing, removing -----------------------------------------------------------------
    def writer(self, key: str, parts: dict[str, Any], features: int) -> FeatureWriter:
        """A :class:`FeatureWriter` for entry ``key`` with ``features`` values per patch."""
        return FeatureWriter(self, key, parts, features)

    def clear(self, slide: str | None = None) -> int:
        """Remove every entry (``slide``: those whose slide hash starts with it) and left-over
        temporary folders; the number of entries removed."""
        if slide is not None and not slide.strip():
            raise ValueError("feature cache clear: an empty slide hash prefix")
        removed = 0
        for e in self.list_entries():
            if slide is None or e["slide"].startswith(slide.strip().lower()):
                removed += self._remove(Path(e["path"]))
        if slide is None:
            shutil.rmtree(self.root / "tmp", ignore_errors=True)
        return removed

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes`` (``keep``:
        an entry to remove only last); the keys removed."""
        entries = sorted(self.list_entries(), key=lambda e: (e["key"] == keep, e["used"]))
        total = sum(e["bytes"] for e in entries)
        gone = []
        for e in entries:
            if total <= self.max_bytes:
                break
            if self._remove(Path(e["path"])):
                gone.append(e["key"])
            total -= e["bytes"]
        return gone

    def remove(self, key: str) -> bool:
        """Remove entry ``key``; whether it was there."""
        return bool(self._remove(self.entries_dir / key))

    def _remove(self, path: Path) -> int:
        trash = self.root / "tmp" / f"trash-{uuid.uuid4().hex}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, trash)  # out of entries/ at once: readers miss, never half see
        except FileNotFoundError:
            return 0  # another process removed it
        except OSError as exc:
            raise OSError(f"feature cache {path}: cannot remove it ({exc.strerror})") from None
        shutil.rmtree(trash, ignore_errors=True)
        return 1


class FeatureWriter:
    """Streams one slide's embeddings into a temporary folder; :meth:`commit` makes the
    entry, :meth:`abort` drops it (module docstring). Use :meth:`FeatureCache.writer`."""

    def __init__(self, cache: FeatureCache, key: str, parts: dict[str, Any], features: int):
        self.cache, self.key, self.parts, self.features = cache, key, parts, int(features)
        self.tmp = cache.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self._files = {n: open(self.tmp / f"{n}.raw", "wb") for n in (*ARRAYS, "tiles")}
        self.rows = 0
        self.tiles_seen: set[int] = set()
        self.problem: str | None = None
        self.closed = False

    def add(self, h, tile, patch_rc, level0, tiles) -> None:
        """Append patches: features ``h`` (n, F), their tiles (n,), grid (n, 2) and level-0
        (n, 2) positions; ``tiles``: every tile of the batch (also those without patches)."""
        if self.closed or self.problem:
            return
        h = np.asarray(h, np.float32)
        if h.shape[1:] != (self.features,):
            raise ValueError(
                f"feature cache: features of shape {h.shape}, not (n, {self.features})"
            )
        limit = _F16_MAX if self.cache.dtype.itemsize == 2 else np.inf
        if h.size and not np.all(np.abs(h) < limit):
            self.problem = f"features beyond {self.cache.dtype.name}'s range (or not finite)"
            return
        values = {"features": h, "tile": tile, "patch_rc": patch_rc, "level0": level0}
        try:
            for name, (dtype, _) in ARRAYS.items():
                dtype = self.cache.dtype if dtype is None else dtype
                self._files[name].write(np.ascontiguousarray(values[name], dtype).tobytes())
            self._files["tiles"].write(np.asarray(tiles, "<i8").tobytes())
        except OSError as exc:  # a full disk: this entry is given up, the run goes on
            self.problem = f"{self.tmp}: {exc.strerror or exc}"
            return
        self.rows += len(h)
        self.tiles_seen.update(int(t) for t in tiles)

    def commit(self, expected_tiles) -> CachedFeatures | None:
        """Make the entry if the writer saw exactly ``expected_tiles`` (every tile of the run,
        none skipped) and nothing went wrong; else drop it. The entry, or None."""
        self._close()
        expected = {int(t) for t in expected_tiles}
        if self.problem or self.tiles_seen != expected:
            self.abort()
            return None
        arrays = {}
        for name, (dtype, trail) in (*ARRAYS.items(), ("tiles", (np.dtype("<i8"), ()))):
            trail = (self.features,) if trail is None else trail
            dtype = self.cache.dtype if dtype is None else dtype
            n = self.rows if name != "tiles" else len(self.tiles_seen)
            arrays[name] = _raw_to_npy(self.tmp / f"{name}.raw", dtype, (n, *trail))
        _sort_by_tile(self.tmp, arrays)
        nbytes = sum((self.tmp / f"{n}.npy").stat().st_size for n in arrays)
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "slide": self.key.split("-", 1)[0],
            "parts": self.parts,
            "patches": self.rows,
            "tiles": len(self.tiles_seen),
            "features": self.features,
            "dtype": self.cache.dtype.name,
            "shapes": {n: list(shape) for n, shape in arrays.items()},
            "bytes": int(nbytes),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if nbytes > self.cache.max_bytes:  # could never stay: do not push the others out
            self.abort()
            return None
        (self.tmp / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        _touch(self.tmp / "used")
        final = self.cache.entries_dir / self.key
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.tmp, final)
        except OSError:  # another process committed the same entry first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.cache.evict(keep=self.key)
        return self.cache.get(self.key)

    def abort(self) -> None:
        """Drop what was written (a cancelled or failed run leaves no entry)."""
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close(self) -> None:
        if not self.closed:
            for fh in self._files.values():
                fh.close()
            self.closed = True


def _raw_to_npy(raw: Path, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``raw`` (its values back to back) as ``<name>.npy`` beside it, copied in blocks."""
    expected = int(np.prod(shape)) * dtype.itemsize
    if raw.stat().st_size != expected:
        raise ValueError(f"feature cache {raw}: {raw.stat().st_size} bytes, not {expected}")
    with open(raw.with_suffix(".npy"), "wb") as out, open(raw, "rb") as src:
        header = {"descr": dtype.str, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(src, out, 8 << 20)
    raw.unlink()
    return shape


def _sort_by_tile(folder: Path, arrays: dict[str, tuple]) -> None:
    """Reorder the patch arrays by tile (stable) when the run gave them out of order, and sort
    ``tiles``; block by block, never the whole features in memory."""
    tiles = np.load(folder / "tiles.npy")
    np.save(folder / "tiles.npy", np.sort(tiles))
    tile = np.load(folder / "tile.npy")
    if len(tile) < 2 or bool(np.all(tile[1:] >= tile[:-1])):
        return
    order = np.argsort(tile, kind="stable")
    for name in ARRAYS:
        src = np.load(folder / f"{name}.npy", mmap_mode="r")
        dst = np.lib.format.open_memmap(
            folder / f"{name}.sorted.npy", "w+", dtype=src.dtype, shape=src.shape
        )
        for i in range(0, len(order), 65536):
            block = order[i : i + 65536]
            dst[i : i + len(block)] = src[block]
        dst.flush()
        del src, dst
        os.replace(folder / f"{name}.sorted.npy", folder / f"{name}.npy")


def _touch(path: Path) -> None:
    now = time.time()
    try:
        path.touch()
        os.utime(path, (now, now))
    except FileNotFoundError:
        pass  # the entry went meanwhile
