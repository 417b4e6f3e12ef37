"""Samples through :class:`torch.utils.data.DataLoader`: read and augmented in worker processes.

Training, validation and test evaluation all draw their batches from :func:`make_loader`:
a :class:`SampleDataset` calls the model's input adapter
(:class:`~histoview.training.adapters.InputAdapter`) ``prepare`` for one sample, and the
adapter's ``collate`` joins a batch, in ``num_workers`` worker processes (0: in the calling
process).

**Results do not depend on the number of workers.** Every random draw has a generator of
its own, seeded from the run's seed and what it is for, never from a worker's state or the
order in which workers finish:

* the order of the training samples in epoch ``e``: ``(seed, ORDER, e)``;
* the augmentation of sample ``i`` in epoch ``e``: ``(seed, SAMPLE, e, i)``;
* MixUp's weight and pairing of step ``s`` of epoch ``e`` (in the engine): ``(seed, MIXUP, e, s)``.

The batch sampler hands each worker ``(epoch, index)`` keys, so persistent workers (kept
alive between epochs) still see the current epoch, and a resumed run draws the same orders
and augmentations as an uninterrupted one (dropout inside a model draws from torch's
generator, seeded at the start of each run). The loader's own torch generator is seeded too,
so creating one does not consume torch's global random stream. Batches are pinned
(page-locked) when training on CUDA, for faster copies to the GPU.

**Caches.** Each worker keeps its own in-memory cache of decoded images (the ``input``
option ``cache_images`` bounds it per process); nuclei graphs are shared through the
on-disk cache. Before workers start, :func:`make_loader` empties the calling process's
in-memory caches that the workers rebuild themselves, so the main process does not keep a
copy of what each worker holds (:meth:`InputAdapter.release_memory`).

:func:`map_samples` runs one function over samples in workers (the nuclei graphs of the
training set, built before the first epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

#: the purposes a random generator is drawn for (the second word of its seed)
ORDER, SAMPLE, MIXUP = 0, 1, 2


def rng_for(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """A NumPy generator seeded from ``(seed, purpose, *keys)`` (non-negative integers)."""
    return np.random.default_rng([int(seed), int(purpose), *map(int, keys)])


class SampleDataset(Dataset):
    """The samples of one split as model inputs, indexed by ``(epoch, sample index)`` keys.

    Args:
        adapter: the model's input adapter (``prepare`` makes one input).
        samples: the split's :class:`~histoview.training.datasets.Sample` list.
        train: augment (training) or not (evaluation).
        seed: the run's seed (non-negative).
        views: evaluation only: the dihedral views to prepare each sample in (``(None,)``:
            the image as it is; the adapter's ``views`` for test-time augmentation).

    An item is ``(input, label)`` in training and ``(tuple of one input per view, label)``
    in evaluation.
    """

    def __init__(
        self,
        adapter,
        samples: Sequence,
        *,
        train: bool,
        seed: int = 0,
        views: tuple = (None,),
    ):
        self.adapter = adapter
        self.samples = list(samples)
        self.train = train
        self.seed = int(seed)
        self.views = tuple(views)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key
        sample = self.samples[index]
        rng = rng_for(self.seed, SAMPLE, epoch, index)
        if self.train:
            return self.adapter.prepare(sample, train=True, rng=rng), sample.label
        prepare = self.adapter.prepare
        views = tuple(prepare(sample, train=False, rng=rng, view=v) for v in self.views)
        return views, sample.label


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys: shuffled per epoch from ``(seed, ORDER, epoch)``
    (training), or in order (evaluation). Call :meth:`set_epoch` before iterating; the last
    batch may be smaller.

    With ``world_size`` > 1 (distributed training, :mod:`histoview.training.distributed`)
    each of the ``world_size`` processes (``rank``) takes its share of the same order:

    * training: the epoch's order is padded, by repeating it from its start, to a multiple
      of ``world_size`` (as :class:`torch.utils.data.DistributedSampler` pads), then cut into
      global batches of ``batch_size * world_size`` keys; process ``rank`` takes the
      ``rank``-th equal part of each. Every process thus makes the same number of steps with
      batches of one size, and one step of all processes together sees the samples that one
      process with ``batch_size * world_size`` sees (when the split divides evenly);
    * evaluation: process ``rank`` takes indices ``rank, rank + world_size, ...`` in order,
      without padding (every sample once, so gathered metrics are exact).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)
        return math.ceil(len(range(self.rank, self.n, self.world_size)) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if not self.shuffle:
            order = np.arange(self.rank, self.n, self.world_size)
            for start in range(0, len(order), self.batch_size):
                yield [(self.epoch, int(i)) for i in order[start : start + self.batch_size]]
            return
        order = rng_for(self.seed, ORDER, self.epoch).permutation(self.n)
        world = self.world_size
        if world > 1 and self.n:  # pad to a multiple of the processes (wrapping round)
            order = np.resize(order, math.ceil(self.n / world) * world)
        step = self.batch_size * world
        for start in range(0, len(order), step):
            part = order[start : start + step]
            share = len(part) // world
            mine = part[self.rank * share : (self.rank + 1) * share]
            yield [(self.epoch, int(i)) for i in mine]


class Collate:
    """``collate_fn``: the adapter's ``collate`` on a batch of items, with the labels as a
    (B,) int64 tensor. Training batches are ``(inputs, labels)``; evaluation batches
    ``(list of inputs, one per view, labels)``. A class, not a closure, so that it pickles
    for worker processes started with ``spawn``."""

    def __init__(self, adapter, *, train: bool):
        self.adapter, self.train = adapter, train

    def __call__(self, items: list[tuple[Any, int]]):
        inputs, labels = zip(*items, strict=True)
        y = torch.tensor(labels, dtype=torch.long)
        if self.train:
            return self.adapter.collate(list(inputs)), y
        n_views = len(inputs[0])
        return [self.adapter.collate([x[v] for x in inputs]) for v in range(n_views)], y


def make_loader(
    adapter,
    samples: Sequence,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    device: str = "cpu",
    tta: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A :class:`DataLoader` over ``samples`` (see the module docstring).

    Args:
        adapter: the model's input adapter.
        samples: the split's samples.
        train: shuffle and augment (training) or keep order and prepare as they are.
        batch_size: samples per batch.
        seed: the run's seed (non-negative).
        num_workers: worker processes (0: load in the calling process). Workers persist
            across epochs.
        device: where the batches go; pinned (page-locked) memory on CUDA only.
        tta: evaluation: prepare every sample in the adapter's test-time views.
        rank, world_size: this process's share of the samples when ``world_size`` processes
            train together (:class:`EpochBatchSampler`); 0 and 1: all of them.

    Returns:
        The loader; its ``batch_sampler`` is an :class:`EpochBatchSampler` (set its epoch).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    views = adapter.views if tta and not train else (None,)
    if num_workers > 0:
        adapter.release_memory()
    return DataLoader(
        SampleDataset(adapter, samples, train=train, seed=seed, views=views),
        batch_sampler=EpochBatchSampler(
            len(samples), batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size
        ),
        collate_fn=Collate(adapter, train=train),
        num_workers=num_workers,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )


class _Mapped(Dataset):
    def __init__(self, fn: Callable, samples: Sequence):
        self.fn, self.samples = fn, list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.fn(self.samples[index])


def _as_is(item):
    return item


def map_samples(fn: Callable, samples: Sequence, *, num_workers: int = 0) -> Iterator:
    """``fn(sample)`` for each of ``samples``, in order, computed in ``num_workers`` worker
    processes (0: here). ``fn`` must pickle (a bound method of an adapter does); its results
    come back as they are."""
    if num_workers == 0:
        yield from map(fn, samples)
        return
    loader = DataLoader(
        _Mapped(fn, samples),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    try:
        yield from loader
    finally:
        close_loader(loader)


def close_loader(loader: DataLoader | None) -> None:
    """Stop a loader's persistent workers now (they would otherwise live until the loader
    is garbage-collected)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if loader is not None:
        loader._iterator = None
