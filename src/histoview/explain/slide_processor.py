"""The processor protocol: how an explanation method plugs into the slide engine.

The slide engine (:mod:`histoview.explain.slide_engine`) owns everything a method shares on a
whole slide: the tile grid at the model's pixel size, reading tiles in ``DataLoader`` workers,
batching, the device and mixed precision, the on-disk store (:mod:`histoview.explain.slide_store`),
resume, progress and cancel. A method brings a **processor**, made per run by the factory in its
registry record (``Method.slide``, :mod:`histoview.explain.methods`)::

    processor = method.slide(model, meta, checkpoint_sha256, SlideContext(...))

and the engine calls, in this order:

1. ``processor.settings()`` once: the JSON-able settings that decide the output (besides the
   checkpoint hash, method, pixel size, region, tile size and overlap, which the engine adds).
   A store made with other settings is not resumed.
2. ``processor.prepare_tile(tile)`` for each tile, in a ``DataLoader`` worker (when
   ``prepare_tile`` is not None): CPU work that needs no model (a glass test, nuclei
   detection). It must be picklable (a module-level function or a ``functools.partial`` of
   one, never a bound method of an object holding a model) and return a dict of numpy arrays.
3. ``processor.process(tiles, boxes, prepared)`` per batch, inside ``torch.autocast`` when
   mixed precision is on: ``tiles`` (B, T, T, 3) uint8 RGB at the model's pixel size
   (T = ``tile_size``), ``boxes`` the batch's :class:`TileBox` es, ``prepared`` the B dicts of
   step 2 (empty dicts without it). It returns B :class:`TileResult` s, in the same order. The
   engine blends each tile's maps into the store's accumulators and records its extras;
   a tile is done (and never processed again, also after a resume) once its batch is written.
4. ``processor.finalize(store)`` once every tile is done (or skipped): reads the accumulated
   maps and the per-tile extras from the :class:`~histoview.explain.slide_store.SlideStore`,
   writes the final maps into the store (e.g. normalised slide-wide,
   :meth:`SlideStore.write_final`) and returns a :class:`SlideOutcome` (summary and the final
   maps to write as OME-TIFF).

**Geometry.** The grid frame is the slide (or ``--region``) at the model's pixel size
``pixel_size_um``, its origin at the region's top-left corner. A tile covers frame pixels
``[r, r + T) x [c, c + T)`` with (r, c) = ``TileBox.frame_rc``; neighbours share ``overlap``
pixels. A map declared by a :class:`MapSpec` with ``factor`` f has one pixel per f x f frame
pixels (pixel size ``f * pixel_size_um``); a tile's map is (T / f, T / f[, channels]) and lands
at map pixel (r / f, c / f). T and the tile stride ``T - overlap`` are multiples of every
``factor``. Where tiles overlap, maps blend as the weighted mean
``sum(w * value) / sum(w)`` with the processor's per-pixel weights (default 1), so no seams
show when the weights taper towards tile borders.

**Corrupt tiles** never reach ``process``: the engine lists them as skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class SlideContext:
    """What a processor factory gets besides the model, its sidecar and the weights' hash.

    Attributes:
        pixel_size_um: micrometres per pixel of the tiles the processor gets (the model's).
        device: torch device the model sits on (``"cuda"``, ``"cpu"``...).
        amp: mixed precision is on (the engine wraps ``process`` in ``torch.autocast``).
        target_class: class index to explain (None: the slide's predicted class, where the
            method decides one; per tile, the tile's predicted class otherwise).
        options: method options chosen by the user (as ``ExplainContext.options``).
    """

    pixel_size_um: float
    device: str = "cpu"
    amp: bool = False
    target_class: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapSpec:
    """One map a processor writes, at ``factor`` model pixels per map pixel.

    Attributes:
        name: the map's name (store arrays ``maps/<name>``; the output file's channel name).
        factor: model pixels per map pixel (A-MIL: the patch size; Grad-CAM: the target
            layer's stride). Tile size and stride are multiples of it.
        channels: 1 for an (h, w) map, C for (h, w, C).
        fill: the value of map pixels no tile wrote (background, skipped tiles).
    """

    name: str
    factor: int
    channels: int = 1
    fill: float = 0.0


@dataclass(frozen=True)
class TileBox:
    """Where one tile lies.

    Attributes:
        index: the tile's number in the grid (row-major over every grid cell, background too).
        grid_rc: (row, col) of the tile in the grid.
        frame_rc: top-left corner (row, col) in model pixels of the grid frame.
        level0: (row, col, height, width) of the rectangle read, in level-0 pixels (floats).
    """

    index: int
    grid_rc: tuple[int, int]
    frame_rc: tuple[int, int]
    level0: tuple[float, float, float, float]


@dataclass
class TileResult:
    """What ``process`` returns for one tile.

    Attributes:
        maps: map name -> float32 (T / f, T / f) or (T / f, T / f, C) values of that tile.
        weights: map name -> float32 (T / f, T / f) blending weights (missing: ones; zero
            where the tile has no value, e.g. glass patches).
        extras: extra name -> the fixed-shape per-tile array declared in
            ``SlideProcessor.extras`` (kept in the store for ``finalize``; e.g. A-MIL's
            streaming pooling state).
    """

    maps: dict[str, np.ndarray]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FinalMap:
    """A finished map: what becomes ``<stem>.<method>.ome.tif``.

    Attributes:
        name: the map's name.
        array: (H, W) or (H, W, C) float32 array-like (a zarr array of the store), read chunk
            by chunk by the writer.
        pixel_size_um: micrometres per map pixel.
        origin_um: (y, x) of the map's top-left corner on the slide, micrometres from level
            0's top-left corner (so the map overlays in place).
        channel_names: one name per channel.
    """

    name: str
    array: Any
    pixel_size_um: float
    origin_um: tuple[float, float]
    channel_names: tuple[str, ...]


@dataclass
class SlideOutcome:
    """What ``finalize`` returns: ``summary`` (JSON-able: the slide prediction, probabilities,
    what the values mean...; the engine adds tiles, time, settings) and the ``maps`` to write
    (the first is ``<stem>.<method>.ome.tif``)."""

    summary: dict[str, Any]
    maps: list[FinalMap]


@runtime_checkable
class SlideProcessor(Protocol):
    """A method's per-tile work on a slide (the module docstring gives the call order).

    Attributes:
        method: the method's registry name.
        maps: the maps it writes.
        extras: per-tile fixed-shape arrays it keeps: name -> (shape, numpy dtype name).
        tile_size: tile edge T in model pixels.
        overlap: pixels neighbouring tiles share (0: none).
        prepare_tile: picklable ``(tile (T, T, 3) uint8) -> dict[str, np.ndarray]`` run in the
            loader's workers, or None.
    """

    method: str
    maps: tuple[MapSpec, ...]
    extras: dict[str, tuple[tuple[int, ...], str]]
    tile_size: int
    overlap: int
    prepare_tile: Callable[[np.ndarray], dict[str, np.ndarray]] | None

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that decide the output (part of the resume key)."""
        ...

    def process(
        self, tiles: np.ndarray, boxes: list[TileBox], prepared: list[dict[str, np.ndarray]]
    ) -> list[TileResult]:
        """The maps and extras of a batch of tiles (B, T, T, 3) uint8."""
        ...

    def finalize(self, store) -> SlideOutcome:
        """The slide-wide result once every tile is done (``store``: the run's
        :class:`~histoview.explain.slide_store.SlideStore`, not imported here: the store
        imports this module)."""
        ...


#: a registry record's factory: ``(model, meta, checkpoint_sha256, context) -> processor``
ProcessorFactory = Callable[[Any, dict, "str | None", SlideContext], SlideProcessor]
