"""Tiles of a slide read in ``DataLoader`` workers, so reading and decoding overlap compute.

:class:`SlideTiles` is a torch ``Dataset`` over the :class:`~histoview.explain.slide_processor.TileBox`
es still to do. Item ``i`` reads its tile with
:meth:`~histoview.io.image.ImageSource.read_rect` at the model's pixel size (nearest finer
pyramid level, resampled; the part outside the slide white glass) and runs the processor's
``prepare_tile`` on it. Each worker process opens its own :class:`~histoview.io.image.ImageSource`
(a source is never shared across processes; opening reads no pixels). A tile that cannot be
decoded (:class:`~histoview.io.errors.ImageReadError`, a corrupt tile) comes back as a marker
with the reason, so the run goes on and lists it; any other error is a bug and propagates.

:func:`collate_tiles` gathers items into a :class:`TileBatch`: the readable tiles stacked
(B, T, T, 3) uint8 (a torch tensor, so it leaves a worker through shared memory; the engine
hands the processor its numpy view), their boxes and prepared dicts, and the skipped tiles with
their reasons.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.utils.data

from histoview.explain.slide_processor import TileBox


@dataclass
class TileBatch:
    """A batch from the loader (module docstring)."""

    tiles: np.ndarray
    boxes: list[TileBox]
    prepared: list[dict[str, np.ndarray]]
    skipped: dict[int, str] = field(default_factory=dict)
    skipped_boxes: list[TileBox] = field(default_factory=list)


class SlideTiles(torch.utils.data.Dataset):
    """The tiles ``boxes`` of the slide at ``path``.

    Args:
        path: the slide file.
        boxes: the tiles to read (level-0 rectangles in ``TileBox.level0``).
        tile_size: tile edge T in pixels at ``pixel_size_um``.
        pixel_size_um: micrometres per pixel of the tiles (the model's).
        level0_pixel_size_um: the slide's level-0 pixel size, as resolved by the caller
            (given to ``open_image``, so every worker uses the same one).
        prepare_tile: the processor's picklable ``prepare_tile``, or None.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        boxes: list[TileBox],
        *,
        tile_size: int,
        pixel_size_um: float,
        level0_pixel_size_um: float,
        prepare_tile: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    ):
        self.path = Path(path)
        self.boxes = list(boxes)
        self.tile_size = int(tile_size)
        self.pixel_size_um = float(pixel_size_um)
        self.level0_pixel_size_um = float(level0_pixel_size_um)
        self.prepare_tile = prepare_tile
        self._src = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.boxes)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_src"] = state["_pid"] = None  # each worker opens its own
        return state

    def source(self):
        """This process's :class:`~histoview.io.image.ImageSource` of the slide."""
        from histoview.io import open_image

        if self._src is None or self._pid != os.getpid():
            self._src = open_image(self.path, pixel_size_um=self.level0_pixel_size_um)
            self._pid = os.getpid()
        return self._src

    def read(self, box: TileBox) -> np.ndarray:
        """The (T, T, 3) uint8 RGB tile of ``box``."""
        t = self.tile_size
        r, c = box.level0[:2]
        tile = self.source().read_rect((r, c), (t, t), self.pixel_size_um, pad=255)
        if tile.shape != (t, t, 3) or tile.dtype != np.uint8:
            raise ValueError(f"read_rect gave {tile.shape} {tile.dtype}, expected ({t}, {t}, 3)")
        return tile

    def __getitem__(self, i: int) -> dict:
        from histoview.io.errors import ImageReadError

        box = self.boxes[i]
        try:
            tile = self.read(box)
        except ImageReadError as exc:
            return {"box": box, "tile": None, "error": str(exc), "prepared": {}}
        prepared = self.prepare_tile(tile) if self.prepare_tile is not None else {}
        return {"box": box, "tile": tile, "error": None, "prepared": prepared}

    def close(self) -> None:
        if self._src is not None and self._pid == os.getpid():
            self._src.close()
        self._src = None


def collate_tiles(items: list[dict]) -> TileBatch:
    """The :class:`TileBatch` of the items of :class:`SlideTiles` (module docstring)."""
    good = [it for it in items if it["tile"] is not None]
    bad = [it for it in items if it["tile"] is None]
    tiles = np.stack([it["tile"] for it in good]) if good else np.zeros((0, 0, 0, 3), np.uint8)
    # a tensor crosses from a worker through shared memory, an array would be pickled
    tiles = torch.from_numpy(tiles)
    return TileBatch(
        tiles=tiles,
        boxes=[it["box"] for it in good],
        prepared=[it["prepared"] for it in good],
        skipped={it["box"].index: it["error"] for it in bad},
        skipped_boxes=[it["box"] for it in bad],
    )


def tile_loader(dataset: SlideTiles, *, batch_size: int, workers: int):
    """The ``DataLoader`` over ``dataset`` in order (results do not depend on ``workers``).

    Workers start the platform's default way (``fork`` on Linux: no second import of torch,
    memory shared copy-on-write). That is safe with the parent's zarr stores: zarr resets its
    event loop and thread pool in a forked child (``zarr.core.sync.reset_resources_after_fork``),
    and each worker opens its own image source; the workers use no torch kernels and no CUDA."""
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": 4}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=max(0, int(workers)),
        collate_fn=collate_tiles,
        **kwargs,
    )
