"""Nuclei of a whole slide (or a region of it), detected tile by tile at the model's pixel size.

The single-image detector (:func:`~histoview.preprocessing.nuclei.detect_nuclei`) runs on
tiles of a grid laid over the region *at the model's pixel size* (``pixel_size_um``: the
nearest finer pyramid level resampled). Each tile is a
*core* of ``tile_px`` x ``tile_px`` pixels, read with a margin of :func:`detection_margin_um`
around it (wider than the largest nucleus the detector keeps, plus the reach of its filters):

* **ownership**: a nucleus is kept only by the tile whose core holds its centroid (cores are
  half-open and tile the region exactly), so a nucleus on a core border is kept once, by the
  tile where it lies inside the read area, whole;
* **never cut**: if a nucleus a tile owns touches the edge of what the tile read, the tile is
  read again with twice the margin (up to :data:`MAX_MARGIN_DOUBLINGS` times; what is left
  is counted in ``stats["cut"]``);
* **safety net**: the detector's threshold is chosen per tile (Otsu), so two tiles can
  segment a border nucleus slightly differently; pairs of nuclei kept by different tiles
  whose centroids are closer than the detector's seed spacing (``min_distance_um``) are
  one nucleus seen twice, and only the first is kept (``stats["merged"]``).

Tiles are read with ``ImageSource.read_rect``. Only tissue tiles are read: ``tissue`` is a
:class:`~histoview.preprocessing.tissue.TissueMask` (its ``fraction`` of the core box) or
any callable ``(row, col, height, width) -> float | bool`` on level-0 boxes. A tile that
cannot be decoded is skipped, listed in ``stats["failed_tiles"]``, and the run goes on.
Nuclei are kept as compact arrays (centroids, features, owning tile); with ``cache_dir``
each finished tile is also written there, so a cancelled or killed run resumes from it.

Coordinates: centroids are (row, col) in **level-0 pixels** of the slide (pixel centres at
integers, as in :mod:`histoview.explain.geojson`); features are the
:data:`~histoview.preprocessing.nuclei.FEATURE_NAMES` morphology in micrometres, measured
at the model's pixel size exactly as for a single image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoview.io.errors import ImageReadError
from histoview.io.files import write_bytes
from histoview.preprocessing.nuclei import FEATURE_NAMES, NucleiDetectorConfig, detect_nuclei

__all__ = [
    "DetectionCancelled",
    "SlideNuclei",
    "detect_slide_nuclei",
    "detection_margin_um",
    "drop_doubles",
    "load_slide_nuclei",
    "tile_nuclei",
]

#: how often a tile whose owned nucleus touches its edge is read again with twice the margin
MAX_MARGIN_DOUBLINGS = 2
#: smallest tissue fraction of a tile's core for the tile to be read
MIN_TISSUE_FRACTION = 0.01
_FORMAT_VERSION = 1


class DetectionCancelled(Exception):
    """The caller's ``cancel()`` returned True; tiles finished so far are in ``cache_dir``."""

    def __init__(self, done: int, total: int):
        super().__init__(f"nuclei detection cancelled after {done} of {total} tiles")
        self.done, self.total = done, total


def detection_margin_um(config: NucleiDetectorConfig | None = None) -> float:
    """Margin (um) read around a tile's core: the diameter of the largest nucleus the detector
    keeps (a disc of ``max_area_um2``), plus the reach of its background estimate (an opening
    of half-size ``background_radius_um`` then a box filter of that size) and of its
    Laplacian of Gaussian (4 sigma). 54 um with the defaults."""
    cfg = config or NucleiDetectorConfig()
    diameter = 2.0 * math.sqrt(cfg.max_area_um2 / math.pi)
    reach = 2.0 * cfg.background_radius_um + 4.0 * max(cfg.blob_sigma_um, cfg.smoothing_um)
    return diameter + reach


@dataclass(frozen=True, eq=False)
class SlideNuclei:
    """Nuclei of a slide region, kept as compact arrays.

    Attributes:
        centroids: (N, 2) float64 (row, col) in level-0 pixels.
        features: (N, F) float32, columns ``feature_names`` (micrometres, see the module).
        feature_names: :data:`~histoview.preprocessing.nuclei.FEATURE_NAMES`.
        tile: (N,) int32 index (into ``tile_boxes``) of the tile that owns each nucleus.
        tile_boxes: (T, 4) int64 (row, col, height, width) of every tile's core, level-0
            pixels (rounded outwards), including the tiles skipped.
        pixel_size_um: um/px the nuclei were detected at (the model's).
        level0_pixel_size_um: um/px of the slide's level 0 (``centroids``' unit).
        level0_shape: (H, W) of level 0.
        region: (row, col, height, width) of the region covered, level-0 pixels.
        stats: ``tiles``, ``tissue_tiles``, ``detected``, ``glass``, ``failed_tiles``
            (list of boxes), ``retried``, ``cut``, ``merged``, ``seconds`` (CPU time of
            this process, :func:`time.process_time`), ``resumed`` (tiles read from the cache).
    """

    centroids: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    tile: np.ndarray
    tile_boxes: np.ndarray
    pixel_size_um: float
    level0_pixel_size_um: float
    level0_shape: tuple[int, int]
    region: tuple[int, int, int, int]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.centroids.shape[0])

    def feature(self, name: str) -> np.ndarray:
        """One feature column (N,) by name, e.g. ``"area_um2"``."""
        return self.features[:, self.feature_names.index(name)]

    def in_box(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Indices of the nuclei whose centroid lies in ``box`` = (row, col, height, width)
        level-0 pixels, the area of those pixels (half-open, the rule tiles own nuclei by)."""
        r, c, h, w = box
        cr, cc = self.centroids[:, 0] + 0.5, self.centroids[:, 1] + 0.5  # pixel corners
        return np.flatnonzero((cr >= r) & (cr < r + h) & (cc >= c) & (cc < c + w))

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write to ``.npz`` (plain arrays, no pickle), renamed into place; returns the path
        (without ``overwrite``, an existing file keeps its name and this gets a numbered one)."""
        stats = json.dumps(self.stats, default=lambda v: np.asarray(v).tolist())
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            format_version=np.array(_FORMAT_VERSION),
            centroids=self.centroids,
            features=self.features,
            feature_names=np.array(self.feature_names, dtype=np.str_).reshape(-1),
            tile=self.tile,
            tile_boxes=self.tile_boxes,
            pixel_size_um=np.array(self.pixel_size_um),
            level0_pixel_size_um=np.array(self.level0_pixel_size_um),
            level0_shape=np.array(self.level0_shape, np.int64),
            region=np.array(self.region, np.int64),
            stats=np.array(stats),
        )
        return write_bytes(Path(path), buffer.getvalue(), overwrite=overwrite)


def load_slide_nuclei(path: str | Path) -> SlideNuclei:
    """Read what :meth:`SlideNuclei.save` wrote (``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as z:
        if "format_version" not in z.files or int(z["format_version"]) > _FORMAT_VERSION:
            raise ValueError(f"{path} is not a histoview slide-nuclei file (or a newer format)")
        return SlideNuclei(
            centroids=z["centroids"].astype(np.float64).reshape(-1, 2),
            features=z["features"].astype(np.float32),
            feature_names=tuple(str(s) for s in z["feature_names"]),
            tile=z["tile"].astype(np.int32),
            tile_boxes=z["tile_boxes"].astype(np.int64).reshape(-1, 4),
            pixel_size_um=float(z["pixel_size_um"]),
            level0_pixel_size_um=float(z["level0_pixel_size_um"]),
            level0_shape=tuple(int(v) for v in z["level0_shape"]),
            region=tuple(int(v) for v in z["region"]),
            stats=json.loads(str(z["stats"])),
        )


@dataclass
class _Grid:
    """The tile grid at the model's pixel size over a region (model-pixel coordinates)."""

    origin: tuple[float, float]  # level-0 (row, col) of model pixel (0, 0)'s corner
    scale: float  # level-0 pixels per model pixel
    shape: tuple[int, int]  # region size in model pixels
    tile: int

    def cores(self) -> list[tuple[int, int, int, int]]:
        h, w = self.shape
        return [
            (r, c, min(self.tile, h - r), min(self.tile, w - c))
            for r in range(0, h, self.tile)
            for c in range(0, w, self.tile)
        ]

    def level0_box(self, core) -> tuple[int, int, int, int]:
        r, c, h, w = core
        r0, c0 = self.origin[0] + r * self.scale, self.origin[1] + c * self.scale
        r1, c1 = r0 + h * self.scale, c0 + w * self.scale
        top, left = math.floor(r0), math.floor(c0)
        return top, left, math.ceil(r1) - top, math.ceil(c1) - left

    def to_level0(self, rc: np.ndarray) -> np.ndarray:
        """Model-pixel (row, col) centres to level-0 pixel coordinates (centres at integers)."""
        return np.asarray(self.origin) + (rc + 0.5) * self.scale - 0.5


def _tissue_fraction(tissue, box) -> float:
    if tissue is None:
        return 1.0
    fraction = getattr(tissue, "fraction", None)
    value = fraction(*box) if fraction is not None else tissue(*box)
    return float(value)


def tile_nuclei(
    tile: np.ndarray, *, pixel_size_um: float, config: NucleiDetectorConfig | None = None
) -> dict[str, np.ndarray]:
    """The nuclei of one tile read at ``pixel_size_um`` (picklable with ``functools.partial``,
    so it runs in the slide engine's loader workers).

    Returns:
        ``rc`` (n, 2) float64 centroids (row, col) in tile pixels (centres at integers),
        ``features`` (n, F) float32 (:data:`~histoview.preprocessing.nuclei.FEATURE_NAMES`)
        and ``edge`` (n,) bool: the nucleus touches the tile's edge (it may be cut there).
    """
    nuclei = detect_nuclei(tile, pixel_size_um, config)
    lab = nuclei.labels
    rim = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    edge = np.zeros(len(nuclei), bool)
    edge[rim[rim > 0] - 1] = True
    return {"rc": nuclei.centroids, "features": nuclei.features, "edge": edge}


def _detect_tile(src, grid: _Grid, core, margin_px: int, cfg, px: float):
    """Nuclei owned by one tile: (centroids model px, features, cut count, doublings)."""
    r, c, h, w = core
    for attempt in range(MAX_MARGIN_DOUBLINGS + 1):
        m = margin_px * 2**attempt
        loc = (grid.origin[0] + (r - m) * grid.scale, grid.origin[1] + (c - m) * grid.scale)
        rgb = src.read_rect(loc, (h + 2 * m, w + 2 * m), px)
        found = tile_nuclei(rgb, pixel_size_um=px, config=cfg)
        cent = found["rc"]  # tile pixels; model-pixel grid offset by (r - m, c - m)
        # the core holds pixels m .. m + h - 1, i.e. centre coordinates [m - 0.5, m + h - 0.5)
        own = ((cent >= m - 0.5) & (cent < np.array([m + h - 0.5, m + w - 0.5]))).all(axis=1)
        cut = int((own & found["edge"]).sum())
        if cut == 0 or attempt == MAX_MARGIN_DOUBLINGS:
            global_rc = cent[own] + np.array([r - m, c - m], np.float64)
            return global_rc, found["features"][own], cut, attempt


def detect_slide_nuclei(
    src,
    pixel_size_um: float,
    *,
    region: tuple[float, float, float, float] | None = None,
    tissue=None,
    min_tissue: float = MIN_TISSUE_FRACTION,
    tile_px: int = 1024,
    margin_um: float | None = None,
    config: NucleiDetectorConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    cache_dir: str | Path | None = None,
) -> SlideNuclei:
    """Detect the nuclei of a slide region tile by tile (the module docstring's rules).

    Args:
        src: an opened :class:`~histoview.io.image.ImageSource` with a known level-0 pixel
            size (the trusted-inputs policy: resolve it first, e.g. ``src.set_pixel_size``).
        pixel_size_um: um/px to detect at, the model's (tiles are read resampled to it).
        region: (row, col, height, width) level-0 pixels; None: the whole slide.
        tissue: a ``TissueMask`` or a callable on level-0 boxes (None: every tile is read).
        min_tissue: smallest tissue fraction of a tile's core for it to be read.
        tile_px: core size in pixels at ``pixel_size_um``.
        margin_um: margin read around each core (default :func:`detection_margin_um`).
        config: detector parameters (micrometres).
        progress: called after each tile with ``done``, ``total``, ``skipped``,
            ``elapsed_s``, ``remaining_s``, ``tile_box`` (level-0 core) and ``nuclei``.
        cancel: polled between tiles; True raises :class:`DetectionCancelled`.
        cache_dir: folder for finished tiles (``tile-<index>.npz``): tiles found there are
            not read again, so a cancelled or killed run resumes.

    Raises:
        ImageReadError: the slide's pixel size is unknown.
        ValueError: a pixel size finer than level 0, or a region outside the slide.
        DetectionCancelled: ``cancel()`` returned True.
    """
    base = src.pixel_size_um
    if not base:
        raise ImageReadError(
            src.path, "unknown pixel size: give it (--pixel-size) before detecting nuclei"
        )
    px = float(pixel_size_um)
    if px < base * 0.99:
        raise ValueError(f"{px} um/px is finer than the slide's level 0 ({base:.4g} um/px)")
    cfg = config or NucleiDetectorConfig()
    H, W = src.levels[0].height, src.levels[0].width
    r0, c0, rh, rw = region if region is not None else (0, 0, H, W)
    if r0 >= H or c0 >= W or r0 + rh <= 0 or c0 + rw <= 0 or rh <= 0 or rw <= 0:
        raise ValueError(f"{src.path}: region {region} lies outside the slide ({H} x {W})")
    scale = px / base
    grid = _Grid(
        (float(r0), float(c0)), scale, (math.ceil(rh / scale), math.ceil(rw / scale)), tile_px
    )
    margin_px = math.ceil((detection_margin_um(cfg) if margin_um is None else margin_um) / px)
    cores = grid.cores()
    boxes = np.array([grid.level0_box(core) for core in cores], np.int64).reshape(-1, 4)
    tissue_ok = [_tissue_fraction(tissue, tuple(b)) >= min_tissue for b in boxes.tolist()]
    cache = None
    if cache_dir is not None:
        key = {
            "pixel_size_um": px,
            "level0_pixel_size_um": float(base),
            "level0_shape": [int(H), int(W)],
            "region": [float(v) for v in (r0, c0, rh, rw)],
            "tile_px": int(tile_px),
            "margin_px": int(margin_px),
            "config": dataclasses.asdict(cfg),
        }
        cache = _open_cache(Path(cache_dir), key)
    total, n_tissue = len(cores), int(sum(tissue_ok))
    stats: dict[str, Any] = {"tiles": total, "tissue_tiles": n_tissue, "glass": total - n_tissue}
    stats.update(detected=0, failed_tiles=[], retried=0, cut=0, merged=0, resumed=0)
    parts_rc, parts_f, parts_t = [], [], []
    start, cpu0 = time.perf_counter(), time.process_time()
    done = skipped = total - n_tissue
    worked, work_s = 0, 0.0
    for index, core in enumerate(cores):
        if not tissue_ok[index]:
            continue
        if cancel is not None and cancel():
            raise DetectionCancelled(done, total)
        t0 = time.perf_counter()
        cached = cache / f"tile-{index}.npz" if cache is not None else None
        found = None
        if cached is not None and cached.exists():
            with np.load(cached, allow_pickle=False) as z:
                found = z["rc"], z["features"], int(z["cut"]), int(z["retries"])
            stats["resumed"] += 1
        else:
            try:
                found = _detect_tile(src, grid, core, margin_px, cfg, px)
            except ImageReadError as exc:
                stats["failed_tiles"].append({"box": boxes[index].tolist(), "error": str(exc)})
                skipped += 1
            worked, work_s = worked + 1, work_s + time.perf_counter() - t0
            if found is not None and cached is not None:
                buffer = io.BytesIO()
                rc, feats, cut, retries = found
                np.savez(buffer, rc=rc, features=feats, cut=cut, retries=retries)
                write_bytes(cached, buffer.getvalue(), overwrite=True)
        if found is not None:
            rc, feats, cut, retries = found
            stats["retried"] += int(retries > 0)
            stats["cut"] += cut
            stats["detected"] += 1
            parts_rc.append(grid.to_level0(rc))
            parts_f.append(np.asarray(feats, np.float32))
            parts_t.append(np.full(len(rc), index, np.int32))
        done += 1
        if progress is not None:
            left = total - done
            progress(
                {
                    "done": done,
                    "total": total,
                    "skipped": skipped,
                    "elapsed_s": time.perf_counter() - start,
                    "remaining_s": (work_s / worked * left) if worked else None,
                    "tile_box": tuple(int(v) for v in boxes[index]),
                    "nuclei": int(sum(len(p) for p in parts_t)),
                }
            )
    centroids = np.concatenate(parts_rc) if parts_rc else np.zeros((0, 2))
    features = np.concatenate(parts_f) if parts_f else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    owner = np.concatenate(parts_t) if parts_t else np.zeros(0, np.int32)
    keep = drop_doubles(centroids, owner, cfg.min_distance_um / base)
    stats["merged"] = int((~keep).sum())
    stats["seconds"] = time.process_time() - cpu0
    return SlideNuclei(
        centroids=centroids[keep],
        features=features[keep],
        feature_names=FEATURE_NAMES,
        tile=owner[keep],
        tile_boxes=boxes,
        pixel_size_um=px,
        level0_pixel_size_um=float(base),
        level0_shape=(int(H), int(W)),
        region=(int(r0), int(c0), int(rh), int(rw)),
        stats=stats,
    )


def _open_cache(folder: Path, key: dict) -> Path:
    """``folder`` holding the tiles of a run with these parameters: tiles of a run with other
    parameters (another pixel size, region, tile size or detector) are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "params.json"
    text = json.dumps(key, sort_keys=True)
    if not key_file.exists() or key_file.read_text(encoding="utf-8") != text:
        for old in folder.glob("tile-*.npz"):
            old.unlink()
        write_bytes(key_file, text.encode("utf-8"), overwrite=True)
    return folder


def drop_doubles(centroids: np.ndarray, owner: np.ndarray, radius_px: float) -> np.ndarray:
    """(N,) bool: False for the later of two nuclei from different tiles (``owner``) whose
    centroids are closer than ``radius_px``: one nucleus that two tiles segmented differently
    and both kept."""
    keep = np.ones(len(centroids), bool)
    if len(centroids) < 2:
        return keep
    from scipy.spatial import cKDTree

    pairs = cKDTree(centroids).query_pairs(radius_px, output_type="ndarray").reshape(-1, 2)
    pairs = pairs[owner[pairs[:, 0]] != owner[pairs[:, 1]]]
    keep[pairs.max(axis=1)] = False
    return keep
