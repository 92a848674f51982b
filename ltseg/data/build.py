"""Datasets and loaders from the ``data`` config group.

Train loader: sampler stream -> (optional) aspect-ratio grouping -> DataLoader workers ->
``Batch``. Each sample's transform seed is a function of ``(sampler seed, global stream
position)``, so scale jitter and flips do not depend on which worker runs them. The loader's
state is ``{"sampler": <sampler state at the stream start>, "batches": <batches consumed>}``;
restoring it replays the index stream (no image is loaded) and continues the identical batches.
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from hydra.utils import instantiate

from ltseg.data.category_stats import CategoryStats
from ltseg.data.collate import Batch, collate
from ltseg.data.lvis import LVISDataset, sample_seed
from ltseg.data.samplers import InfiniteSampler
from ltseg.data.transforms import build_transform


def build_dataset(data_cfg, split: str, stats: CategoryStats | None = None) -> LVISDataset:
    """``LVISDataset`` for ``split`` of ``data_cfg``; a non-train split gets the training stats.

    Runs ``data_cfg.generator`` first when set (it creates the files, e.g. the synthetic dataset).
    ``stats=None`` for a non-train split: computed from ``data_cfg.train.ann_file``.
    """
    if data_cfg.get("generator"):
        instantiate(data_cfg.generator)
    if data_cfg.get(split) is None:
        raise KeyError(f"data config '{data_cfg.get('name')}' has no '{split}' split")
    split_cfg = data_cfg[split]
    if stats is None and split != "train":
        stats = CategoryStats.from_json(data_cfg.train.ann_file, split="train")
    dataset = LVISDataset(split_cfg.ann_file, split_cfg.image_root, stats=stats,
                          transform=build_transform(data_cfg, split))
    expected = data_cfg.get("num_classes")
    if expected is not None and int(expected) != dataset.stats.num_classes:
        raise ValueError(f"data.num_classes={expected} but {data_cfg.train.ann_file} defines "
                         f"{dataset.stats.num_classes} categories (set data.num_classes=null to take it from the file)")
    return dataset


def group_batches(items: Iterable, batch_size: int, key: Callable = lambda item: 0) -> Iterator[list]:
    """Batches of ``batch_size`` stream items sharing ``key(item)``; a batch is emitted as soon as
    its group is full (detectron2's ``AspectRatioGroupedDataset``)."""
    buckets: dict = {}
    for item in items:
        bucket = buckets.setdefault(key(item), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield bucket
            buckets[key(item)] = []


class _SeededStream:
    """The sampler's stream as ``(index, transform seed)``, the seed from the global position."""

    def __init__(self, sampler: InfiniteSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        pos = s.state_dict()["global_position"] + s.rank
        for i in s:
            yield i, sample_seed(s.seed, pos)
            pos += s.world_size


class _BatchIndices:
    """The DataLoader's batch sampler (main process): the stream from the loader's start,
    grouped, minus the batches already consumed."""

    def __init__(self, loader: "TrainLoader"):
        self.loader = loader

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ld = self.loader
        ld.sampler.load_state_dict(ld._start)
        groups = ld._group_ids
        key = (lambda item: int(groups[item[0]])) if groups is not None else (lambda item: 0)
        return itertools.islice(group_batches(_SeededStream(ld.sampler), ld.images_per_gpu, key), ld._skip, None)


class TrainLoader:
    """Infinite iterator of ``Batch`` for this rank; ``state_dict()`` gives the consumed position."""

    def __init__(self, dataset, sampler: InfiniteSampler, images_per_gpu: int, num_workers: int = 0,
                 aspect_grouping: bool = True, size_divisibility: int = 32, pin_memory: bool = False):
        if images_per_gpu < 1:
            raise ValueError(f"images_per_gpu must be >= 1, got {images_per_gpu}")
        self.dataset, self.sampler = dataset, sampler
        self.images_per_gpu = int(images_per_gpu)
        self.num_workers = int(num_workers)
        self.size_divisibility = int(size_divisibility)
        self.pin_memory = pin_memory
        self._group_ids = (dataset.aspect_ratios() < 1.0).astype(np.int8) if aspect_grouping else None
        self._start = sampler.state_dict()
        self._skip = 0            # batches to skip at the next __iter__ (resume)
        self.batches = 0          # batches handed out (or failed) since the stream start

    def state_dict(self) -> dict:
        return {"sampler": dict(self._start), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self._start = dict(state["sampler"])
        self.sampler.load_state_dict(self._start)
        self.batches = int(state["batches"])

    def __iter__(self) -> "_TrainIterator":
        self._skip = self.batches
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_BatchIndices(self), num_workers=self.num_workers,
            collate_fn=functools.partial(collate, size_divisibility=self.size_divisibility),
            pin_memory=self.pin_memory, persistent_workers=False,
        )
        return _TrainIterator(self, iter(loader))


class _TrainIterator:
    """Counts every batch it is asked for, also when loading it raises (corrupt image)."""

    def __init__(self, loader: TrainLoader, it):
        self.loader, self.it = loader, it

    def __iter__(self) -> "_TrainIterator":
        return self

    def __next__(self) -> Batch:
        self.loader.batches += 1
        return next(self.it)


def build_train_loader(dataset, sampler: InfiniteSampler, images_per_gpu: int, num_workers: int = 0,
                       aspect_grouping: bool = True, size_divisibility: int = 32,
                       pin_memory: bool = False) -> TrainLoader:
    """Infinite per-rank train loader; images with ``w >= h`` and ``w < h`` batched separately
    when ``aspect_grouping``. Resumable through ``state_dict()`` / ``load_state_dict()``."""
    return TrainLoader(dataset, sampler, images_per_gpu, num_workers, aspect_grouping, size_divisibility,
                       pin_memory)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous shard ``[begin, end)`` of ``n`` items for ``rank``; shards partition ``0..n-1``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


def build_test_loader(dataset, images_per_gpu: int = 1, num_workers: int = 0, rank: int = 0,
                      world_size: int = 1, size_divisibility: int = 32) -> torch.utils.data.DataLoader:
    """Finite loader over this rank's contiguous shard, in dataset order (every image exactly once
    over all ranks)."""
    begin, end = shard_bounds(len(dataset), rank, world_size)
    batches = [list(range(b, min(b + images_per_gpu, end))) for b in range(begin, end, images_per_gpu)]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
    )
