"""The nuclei graph on a whole slide through the slide engine (``Method.slide`` of ``graph``).

Nuclei are not a per-tile map: the graph model needs every nucleus of the slide at once. So the
engine's tiles only *find* them, and the graph is explained once all are found:

1. **tiles** (``prepare_tile``, in the engine's loader workers, so detection runs in parallel
   processes): :func:`~histoview.preprocessing.slide_nuclei.tile_nuclei` on each tissue tile
   read at the model's pixel size. Neighbouring tiles overlap by ``overlap`` pixels, twice
   :func:`~histoview.preprocessing.slide_nuclei.detection_margin_um` (rounded up to the live
   map's cell), so every nucleus lies whole inside some tile, at least a margin from its edge;
2. ``process`` keeps each tile's nuclei (centroids, morphology, touching-the-edge flags) as the
   tile's extras in the engine's store (so a cancelled or killed run resumes from them) and
   writes a live map of nuclei per mm^2 (``nuclei_per_mm2``, 16 um cells at 0.5 um/px) that the
   viewer shows while the run goes;
3. ``finalize``: each nucleus is kept only from the tile whose *core* holds its centroid: the
   cores ``[i s + o/2, (i + 1) s + o/2)`` (stride s, overlap o; the first and last tiles' cores
   reach the frame's edges) partition the frame, so no nucleus counts twice; one seen only by
   tiles that do not own it (its owner was glass or unreadable) is kept once (copies closer
   than the detector's seed spacing are one nucleus). Then
   :func:`~histoview.explain.slide_graph.explain_slide_graph` (the exact slide prediction,
   attention or window occlusion), and the outputs: the density map (the run's
   ``<stem>.graph.ome.tif``: importance, nuclei per mm^2, window probability), and beside it
   ``<stem>.graph.geojson`` (every nucleus for QuPath) and ``<stem>.graph.nuclei.npz`` (the
   nuclei with their importance as the last feature column: the viewer's zoomed-in points
   and, through :class:`~histoview.explain.slide_graph_outputs.NucleiView`, the edges of the
   view), named in the summary's ``nuclei_files``.

Options (``SlideContext.options``): ``importance`` (``auto``, ``attention``, ``occlusion``), ``k``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from histoview.explain.slide_processor import (
    FinalMap,
    MapSpec,
    SlideContext,
    SlideOutcome,
    TileResult,
)

#: live map cell, model pixels (16 um at 0.5 um/px); tile size and stride are multiples of it
CELL = 32
#: tile edge, model pixels
TILE_SIZE = 1024
#: most nuclei a tile keeps (8,192 in 1024^2 pixels at 0.5 um/px: one per 32 um^2)
MAX_TILE_NUCLEI = 8192
#: tiles read from the store at a time in finalize
GATHER_BLOCK = 64
#: weight of a tile's live-map cells outside its core (so the frame's edges get values)
RIM_WEIGHT = 1e-3


class GraphSlideProcessor:
    """The ``graph`` method's processor for the slide engine (module docstring).

    Args:
        model: a graph model (RSF, RSF+Edge, RSF+Attention), on ``ctx.device``.
        meta: its checkpoint sidecar (classes, ``input.graph_threshold_um``).
        checkpoint_sha256: the weights' hash.
        ctx: the run's :class:`SlideContext` (options ``importance``, ``k``).
        tile_size: tile edge in model pixels (a multiple of :data:`CELL`).
    """

    method = "graph"

    def __init__(self, model, meta, checkpoint_sha256, ctx: SlideContext, *, tile_size=TILE_SIZE):
        from histoview.models.inputs import InputSpec
        from histoview.preprocessing.nuclei import FEATURE_NAMES, NucleiDetectorConfig
        from histoview.preprocessing.slide_nuclei import detection_margin_um, tile_nuclei

        if tile_size % CELL:
            raise ValueError(f"tile size {tile_size} is not a multiple of {CELL}")
        self.model, self.meta, self.sha, self.ctx = model, meta, checkpoint_sha256, ctx
        self.threshold_um = InputSpec.from_checkpoint(meta, model).graph_threshold_um
        self.config = NucleiDetectorConfig()
        px = float(ctx.pixel_size_um)
        margin = math.ceil(detection_margin_um(self.config) / px)
        self.tile_size = int(tile_size)
        self.overlap = math.ceil(2 * margin / CELL) * CELL
        if self.overlap >= self.tile_size:
            raise ValueError(f"tiles of {tile_size} pixels are too small for a {margin} px margin")
        self.feature_names = FEATURE_NAMES
        self.maps = (MapSpec("nuclei_per_mm2", factor=CELL),)
        width = 3 + len(FEATURE_NAMES)  # row, col, touches the edge, features
        self.extras = {"n": ((), "int64"), "nuclei": ((MAX_TILE_NUCLEI, width), "float32")}
        self.prepare_tile = functools.partial(tile_nuclei, pixel_size_um=px, config=self.config)
        options = dict(ctx.options or {})
        self.importance = options.get("importance") or "auto"
        self.k = int(options.get("k", 1))

    def settings(self) -> dict[str, Any]:
        return {
            "detector": dataclasses.asdict(self.config),
            "graph_threshold_um": self.threshold_um,
            "importance": self.importance,
            "k": self.k,
            "max_tile_nuclei": MAX_TILE_NUCLEI,
        }

    def process(self, tiles, boxes, prepared) -> list[TileResult]:
        t, half = self.tile_size, self.overlap // 2
        cells = t // CELL
        core = np.zeros((cells, cells), bool)
        core[half // CELL : (t - half) // CELL, half // CELL : (t - half) // CELL] = True
        weight = np.where(core, 1.0, RIM_WEIGHT).astype(np.float32)
        per_mm2 = 1.0 / (CELL * self.ctx.pixel_size_um * 1e-3) ** 2
        out = []
        for found in prepared:
            rc, feats, edge = found["rc"], found["features"], found["edge"]
            n = min(len(rc), MAX_TILE_NUCLEI)
            packed = np.zeros((MAX_TILE_NUCLEI, 3 + feats.shape[1]), np.float32)
            packed[:n, :2], packed[:n, 2], packed[:n, 3:] = rc[:n], edge[:n], feats[:n]
            whole = rc[~edge]
            ij = np.clip(np.floor((whole + 0.5) / CELL).astype(np.int64), 0, cells - 1)
            count = np.zeros((cells, cells), np.float32)
            np.add.at(count, (ij[:, 0], ij[:, 1]), 1.0)
            out.append(
                TileResult(
                    maps={"nuclei_per_mm2": count * np.float32(per_mm2)},
                    weights={"nuclei_per_mm2": weight},
                    extras={"n": np.int64(len(rc)), "nuclei": packed},
                )
            )
        return out

    def gather(self, store):
        """The slide's nuclei from the store's tiles, each once (module docstring, step 3)."""
        from histoview.preprocessing.slide_nuclei import SlideNuclei, drop_doubles

        grid = store.grid
        rows, cols = grid.shape
        s, half, scale = grid.stride, self.overlap / 2, grid.scale
        frame = np.asarray(grid.frame_shape, np.float64)
        done = store.done_indices()
        done_set = np.zeros(grid.n_tiles, bool)
        done_set[done] = True
        parts, owners, stats = [], [], {"cut": 0, "orphans": 0, "overflow": 0}
        for start in range(0, len(done), GATHER_BLOCK):
            block = done[start : start + GATHER_BLOCK]
            counts = np.asarray(store.extras("n").oindex[block])
            packed = np.asarray(store.extras("nuclei").oindex[block])
            for index, n, rowsv in zip(block, counts, packed):
                stats["overflow"] += max(0, int(n) - MAX_TILE_NUCLEI)
                rowsv = rowsv[: min(int(n), MAX_TILE_NUCLEI)]
                box = grid.box(int(index))
                corner = rowsv[:, :2].astype(np.float64) + 0.5 + np.asarray(box.frame_rc)
                inside = ((corner >= 0) & (corner < frame)).all(axis=1)
                own_rc = np.floor((corner - half) / s).astype(np.int64)
                own_rc = np.clip(own_rc, 0, np.array([rows - 1, cols - 1]))
                owner = own_rc[:, 0] * cols + own_rc[:, 1]
                mine = owner == index
                orphan = ~done_set[owner] & (rowsv[:, 2] == 0)
                keep = inside & (mine | orphan)
                stats["cut"] += int((keep & mine & (rowsv[:, 2] > 0)).sum())
                stats["orphans"] += int((keep & orphan).sum())
                level0 = np.asarray(grid.region[:2]) + corner[keep] * scale - 0.5
                parts.append(np.concatenate([level0, rowsv[keep, 3:]], axis=1))
                owners.append(np.full(int(keep.sum()), index, np.int64))
        width = 2 + len(self.feature_names)
        table = np.concatenate(parts) if parts else np.zeros((0, width))
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        p0 = grid.level0_pixel_size_um
        keep = drop_doubles(table[:, :2], owner, self.config.min_distance_um / p0)
        stats["merged"] = int((~keep).sum())
        r0, c0, h, w = grid.region
        return SlideNuclei(
            centroids=table[keep, :2],
            features=table[keep, 2:].astype(np.float32),
            feature_names=self.feature_names,
            tile=owner[keep].astype(np.int32),
            tile_boxes=np.array([grid.box(i).level0 for i in range(grid.n_tiles)]).reshape(-1, 4),
            pixel_size_um=float(grid.pixel_size_um),
            level0_pixel_size_um=float(p0),
            level0_shape=(int(math.ceil(r0 + h)), int(math.ceil(c0 + w))),
            region=(int(r0), int(c0), int(round(h)), int(round(w))),
            stats={**stats, "tiles_done": int(len(done))},
        )

    def finalize(self, store) -> SlideOutcome:
        from histoview.explain.slide_graph import explain_slide_graph
        from histoview.explain.slide_graph_outputs import (
            density_map,
            slide_graph_summary,
            write_nuclei_geojson,
        )

        nuclei = self.gather(store)
        if len(nuclei) == 0:
            raise ValueError("no nuclei found in the tissue tiles; no graph to explain")
        target = self.ctx.target_class
        result = explain_slide_graph(
            self.model,
            nuclei,
            classes=tuple(self.meta.get("classes") or ()),
            importance=self.importance,
            k=self.k,
            target_class=target,
            threshold_um=self.threshold_um,
        )
        folder, stem = _output_place(store)
        note = {"checkpoint_sha256": self.sha, "model": self.meta.get("model")}
        geojson = write_nuclei_geojson(folder / f"{stem}.graph.geojson", result, properties=note)
        saved = _save_with_importance(nuclei, result, folder / f"{stem}.graph.nuclei.npz")
        summary = slide_graph_summary(result, self.meta)
        summary["checkpoint_sha256"] = self.sha
        summary["nuclei_files"] = {"geojson": geojson.name, "nuclei": saved.name}
        array, cell_um, origin, names = density_map(result)
        fmap = FinalMap("importance_density", array, cell_um, origin, names)
        return SlideOutcome(summary=summary, maps=[fmap])


def _output_place(store) -> tuple[Path, str]:
    """The output folder and the run's stem: the store's ``output_stem`` (the same numbered
    name as the run's maps and summary), else the stem of the store ``<stem>.graph.zarr``."""
    path = Path(store.path)
    if store.output_stem:
        return path.parent, store.output_stem
    name = path.name
    stem = name[: -len(".graph.zarr")] if name.endswith(".graph.zarr") else path.stem
    return path.parent, stem


def _save_with_importance(nuclei, result, path: Path) -> Path:
    """The nuclei table with the importance as one more feature column (``importance``), and
    in ``stats`` what it is (numbered name when ``path`` exists)."""
    with_imp = dataclasses.replace(
        nuclei,
        features=np.concatenate([nuclei.features, result.importance[:, None]], 1),
        feature_names=(*nuclei.feature_names, "importance"),
        stats={**nuclei.stats, "importance": result.importance_kind},
    )
    return with_imp.save(path, overwrite=False)


def graph_slide_processor(model, meta, sha, ctx: SlideContext) -> GraphSlideProcessor:
    """The registry's factory (``Method.slide``) for ``graph`` (tiles of :data:`TILE_SIZE`)."""
    return GraphSlideProcessor(model, meta, sha, ctx, tile_size=TILE_SIZE)
