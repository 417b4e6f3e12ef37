"""Training samples as model inputs: augmentation, caching and batching around the one
input path (:class:`~histoview.models.inputs.InputSpec`, shared with explanation).

* bag (A-MIL): the image is augmented (the eight flips and 90/180/270 rotations that
  Patil et al., 2019 use), cut into the spec's patch grid, normalised; optional instance
  dropout.
* image (CNNs): resized to the model's input size, augmented the same way,
  normalised with the model's mean/std.
* graph (nuclei graphs): nuclei detected and the cell graph built once per
  image and cached on disk in a per-user cache shared by all runs (keyed by
  the file's content and the settings), then converted to a torch-geometric ``Data``.

With a stain normaliser (a config's ``stain`` section, fitted before training) every image is
normalised once when it is decoded (the in-memory cache holds normalised images), by the
spec's :meth:`~histoview.models.inputs.InputSpec.normalise_stain`, as at inference. HED stain
jitter (``augment: {hed_jitter: sigma}``, bag and image models, training only) perturbs the
normalised image before the flips and rotations.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoview.models.inputs import InputSpec
from histoview.models.registry import ModelConfig
from histoview.preprocessing.stain import HedJitter
from histoview.preprocessing.transforms import DIHEDRAL, dihedral, random_dihedral
from histoview.training.datasets import Sample


def default_cache_dir() -> Path:
    """Per-user cache shared by every run (``$HISTOVIEW_CACHE_DIR`` overrides it).

    Nuclei graphs (detection plus graph building, the expensive preprocessing) are stored
    here keyed by the image file's content and the settings, so runs that share data build
    each graph once. Patch bags are cut on the fly: slicing a decoded image is cheaper than
    reading a cache.
    """
    import os

    base = os.environ.get("HISTOVIEW_CACHE_DIR")
    if base:
        return Path(base)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("histoview", appauthor=False))


class _ImageCache:
    """Decoded images kept in memory (at most ``max_items``, least recently used dropped), so
    epochs do not re-decode or re-generate. One per process: a copy sent to a worker process
    (pickled) starts empty, so each data-loader worker keeps the images it decodes."""

    def __init__(self, max_items: int = 512, prepare=None):
        self.max_items = max_items
        self.prepare = prepare  # applied to each decoded image (stain normalisation) or None
        self._items: OrderedDict[str, tuple[np.ndarray, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_items": self.max_items, "prepare": self.prepare}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_items"], state.get("prepare"))

    def load(self, sample: Sample) -> tuple[np.ndarray, float | None]:
        key = sample.key
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = sample.load()
        if self.prepare is not None:
            value = (self.prepare(value[0]), value[1])
        self._items[key] = value
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value


class InputAdapter:
    """Base: load with a cache, augment, collate, forward.

    Adapters run in data-loader worker processes (:mod:`histoview.training.loader`): they
    pickle, and their in-memory caches are per process.

    ``stain``: a fitted :class:`~histoview.preprocessing.stain.StainNormaliser` (or its
    ``to_dict``) applied to every image; ``hed_jitter``: HED stain-jitter sigma in training.
    """

    def __init__(
        self,
        config: ModelConfig,
        model_kwargs: dict[str, Any],
        options: dict[str, Any] | None = None,
        *,
        stain=None,
        hed_jitter: float = 0.0,
    ):
        self.config = config
        self.model_kwargs = model_kwargs
        self.options = dict(options or {})
        self.spec = InputSpec.for_model(config, model_kwargs, self.options, stain=stain)
        prepare = self.spec.normalise_stain if self.spec.stain is not None else None
        self.cache = _ImageCache(self.options.get("cache_images", 512), prepare)
        self.jitter = HedJitter(hed_jitter) if hed_jitter else None

    def _augment_colour(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.jitter(image, rng) if self.jitter is not None else image

    def prepare(
        self, sample: Sample, *, train: bool, rng: np.random.Generator, view: tuple | None = None
    ):
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        raise NotImplementedError

    def forward(self, model, batch, device: str) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"hed_jitter": self.jitter.sigma} if self.jitter is not None else {}

    def release_memory(self) -> None:
        """Empty the in-memory caches that worker processes rebuild on their own (the
        decoded images), before workers take over loading, so this process keeps no copy."""
        self.cache.clear()

    @property
    def views(self) -> tuple:
        """Test-time augmentation views (the eight dihedral symmetries)."""
        return DIHEDRAL


class BagAdapter(InputAdapter):
    def __init__(self, config, model_kwargs, options=None, **kwargs):
        super().__init__(config, model_kwargs, options, **kwargs)
        # Instance dropout (training only): keep a random subset of each bag, so the
        # classifier cannot rely on a few patches and attention spreads over all the
        # evidence; this sharpens attention maps as localisers. 0 disables it.
        self.instance_dropout = float(self.options.get("instance_dropout", 0.0))

    def prepare(self, sample, *, train, rng, view=None):
        image, _ = self.cache.load(sample)  # stain-normalised when the spec has a normaliser
        if train:
            image = random_dihedral(self._augment_colour(image, rng), rng)
        elif view is not None:
            image = dihedral(image, *view)
        bag, _ = self.spec.bag(image, stain_normalised=True)
        if train and self.instance_dropout > 0 and len(bag) > 1:
            keep = rng.random(len(bag)) >= self.instance_dropout
            keep[rng.integers(len(bag))] = True
            bag = bag[torch.from_numpy(keep)]
        return bag

    def collate(self, items):
        return items  # bags may differ in size after background filtering

    def forward(self, model, batch, device):
        sizes = {b.shape[0] for b in batch}
        if len(sizes) == 1:
            return model(torch.stack([b.to(device, non_blocking=True) for b in batch]))
        return torch.cat([model(b.to(device, non_blocking=True)) for b in batch])

    def describe(self):
        return (
            self.spec.describe() | {"instance_dropout": self.instance_dropout} | super().describe()
        )


class ImageAdapter(InputAdapter):
    def prepare(self, sample, *, train, rng, view=None):
        image, _ = self.cache.load(sample)  # stain-normalised when the spec has a normaliser
        if train:
            image = self._augment_colour(image, rng)
        x = self.spec.images(image, stain_normalised=True)
        if train:
            x = random_dihedral(x, rng)
        elif view is not None:
            x = dihedral(x, *view)
        size = tuple(self.config.input_size or x.shape[-2:])
        if x.shape[-2:] != size:  # rot90 of a non-square input
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear")[0]
        return x

    def collate(self, items):
        return torch.stack(items)

    def forward(self, model, batch, device):
        return model(batch.to(device, non_blocking=True))

    def describe(self):
        return self.spec.describe() | super().describe()


class GraphAdapter(InputAdapter):
    """Nuclei graphs, built once per image and cached on disk."""

    def __init__(self, config, model_kwargs, options=None, **kwargs):
        super().__init__(config, model_kwargs, options, **kwargs)
        if self.jitter is not None:
            raise ValueError("HED stain jitter applies to bag and image models, not to graphs")
        self.threshold_um = self.spec.graph_threshold_um
        # for images without a pixel size of their own (the input path's policy)
        self.default_pixel_size = self.spec.pixel_size(None)[0]
        cache = self.options.get("cache_dir", default_cache_dir() / "graphs")
        self.cache_dir = Path(cache) if cache else None
        self.node_dropout = float(self.options.get("node_dropout", 0.0))
        if not 0.0 <= self.node_dropout < 1.0:
            raise ValueError(f"node_dropout must be in [0, 1), got {self.node_dropout}")
        self._graphs: dict[str, Any] = {}

    @property
    def views(self) -> tuple:
        return ((0, False),)  # node features are rotation-invariant: no image TTA for graphs

    def release_memory(self) -> None:
        """As the base; graphs too when the disk cache holds them (without a disk cache the
        graphs in memory are the only copy: workers inherit or receive them)."""
        super().release_memory()
        if self.cache_dir is not None:
            self._graphs.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.cache_dir is not None:  # a worker reads them from the disk cache
            state["_graphs"] = {}
        return state

    def build_graphs(self, samples: list[Sample], *, num_workers: int = 0) -> Iterator:
        """The graphs of ``samples`` in order (:meth:`graph_for`), built in ``num_workers``
        data-loader worker processes (0: here). With a disk cache the workers' graphs stay on
        disk (read again where needed); without one they are kept in memory here."""
        from histoview.training.loader import map_samples

        graphs = map_samples(self.graph_for, samples, num_workers=num_workers)
        for sample, graph in zip(samples, graphs, strict=True):
            if num_workers and self.cache_dir is None:
                self._graphs[sample.key] = graph
            yield graph

    def graph_for(self, sample: Sample):
        """The sample's :class:`~histoview.preprocessing.graph.NucleiGraph`: from memory,
        else from the disk cache, else built (nuclei detection and graph building) and
        written to the disk cache (atomically, by ``save_graph``: concurrent workers and
        runs never read a half-written file)."""
        from histoview.preprocessing.graph import load_graph, save_graph

        if sample.key in self._graphs:
            return self._graphs[sample.key]
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{self._cache_key(sample)}.npz"
            if path.exists():
                graph = load_graph(path)
                self._graphs[sample.key] = graph
                return graph
        image, mpp = sample.load()
        graph, _ = self.spec.graph(image, self.spec.pixel_size(mpp)[0])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_graph(graph, path)
        self._graphs[sample.key] = graph
        return graph

    def _cache_key(self, sample: Sample) -> str:
        h = hashlib.sha256()
        if sample.path is not None:
            h.update(Path(sample.path).read_bytes())
        else:
            h.update(repr(sample.phantom).encode())
        settings = {"t": self.threshold_um, "mpp": self.default_pixel_size, "v": 1}
        if self.spec.stain is not None:  # graphs of stain-normalised images are other graphs
            settings["stain"] = self.spec.stain.to_dict()
        h.update(json.dumps(settings).encode())
        return h.hexdigest()[:32]

    def prepare(self, sample, *, train, rng, view=None):
        """The sample's graph; in training, with ``node_dropout`` > 0, a random share of its
        nuclei (and their edges) is left out each time it is drawn: the graph analogue of
        patch and pixel augmentation, so no small set of nuclei is always there to decide."""
        data = self.graph_for(sample).to_pyg()
        if not (train and self.node_dropout > 0 and data.num_nodes > 1):
            return data
        keep = torch.from_numpy(rng.random(data.num_nodes) >= self.node_dropout)
        if not bool(keep.any()):
            keep[int(rng.integers(data.num_nodes))] = True
        return data.subgraph(keep)

    def collate(self, items):
        from torch_geometric.data import Batch

        return Batch.from_data_list(items)

    def forward(self, model, batch, device):
        return model(batch.to(device, non_blocking=True))

    def describe(self):
        out = {"graph_threshold_um": self.threshold_um, "pixel_size_um": self.default_pixel_size}
        return out | ({"node_dropout": self.node_dropout} if self.node_dropout else {})


def make_adapter(
    config: ModelConfig,
    model_kwargs: dict[str, Any],
    options: dict[str, Any] | None = None,
    *,
    stain=None,
    hed_jitter: float = 0.0,
) -> InputAdapter:
    """The adapter of a model kind; ``stain`` (a fitted normaliser or a checkpoint's
    ``stain_normalisation``) and ``hed_jitter`` as :class:`InputAdapter`."""
    cls = {"bag": BagAdapter, "image": ImageAdapter, "graph": GraphAdapter}[config.kind]
    return cls(config, model_kwargs, options, stain=stain, hed_jitter=hed_jitter)
