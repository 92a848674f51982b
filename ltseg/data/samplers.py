"""Infinite, rank-sharded, seedable, resumable training samplers.

Every sampler defines one global stream of dataset indices, epoch after epoch, drawn from a
single ``torch.Generator`` seeded with ``seed`` (detectron2's ``TrainingSampler`` /
``RepeatFactorTrainingSampler`` semantics: for ``world_size == 1`` the streams are identical).
Rank ``r`` of ``W`` takes global positions ``r, r + W, r + 2W, ...``, so ranks are disjoint and
together consume the stream in order.

State: ``{"seed", "global_position"}`` with ``global_position`` = indices consumed by all ranks
(``W x`` this rank's count), so a state saved on any rank resumes every rank, for any world size.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


class InfiniteSampler(torch.utils.data.Sampler):
    """Base: subclasses implement ``_epoch(generator) -> LongTensor`` (one epoch of the stream)."""

    def __init__(self, dataset, seed: int = 0, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"{type(self).__name__}: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if len(dataset) == 0:
            raise ValueError(f"{type(self).__name__}: the dataset is empty")
        self.num_images = len(dataset)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._consumed = 0                      # indices this rank has yielded since start
        self._start = 0                         # global position of the stream start

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def epochs(self) -> Iterator[list[int]]:
        """The global stream, one epoch (list of dataset indices) at a time."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            yield self._epoch(g).tolist()

    def __iter__(self) -> Iterator[int]:
        pos = self._start + self._consumed * self.world_size + self.rank
        epoch_start = 0
        for indices in self.epochs():
            while pos < epoch_start + len(indices):
                item = indices[pos - epoch_start]
                self._consumed += 1            # before yielding: state_dict() counts what was handed out
                pos += self.world_size
                yield item
            epoch_start += len(indices)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "global_position": self._start + self._consumed * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"{type(self).__name__}: state was saved with seed {state['seed']}, "
                             f"this sampler has seed {self.seed}")
        self._start, self._consumed = int(state["global_position"]), 0


class TrainingSampler(InfiniteSampler):
    """``random``: a fresh permutation of all images every epoch."""

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.num_images, generator=generator)


def repeat_factors(image_labels: list[np.ndarray], repeat_thresh: float, sqrt: bool = True) -> torch.Tensor:
    """Per-image repeat factor ``r_I = max_{c in I} r_c`` (1 for unlabelled images), float32 ``(N,)``.

    ``f_c`` = fraction of images containing ``c``; ``r_c = max(1, sqrt(t / f_c))`` (or ``t / f_c``
    without ``sqrt``). Computed in float64 like detectron2, returned as float32 like detectron2.
    """
    n = len(image_labels)
    counts: dict[int, int] = {}
    for labels in image_labels:
        for c in np.unique(labels).tolist():
            counts[c] = counts.get(c, 0) + 1
    rep = {}
    for c, k in counts.items():
        r = repeat_thresh / (k / n)
        rep[c] = max(1.0, math.sqrt(r) if sqrt else r)
    return torch.tensor([max((rep[c] for c in np.unique(lab).tolist()), default=1.0) for lab in image_labels],
                        dtype=torch.float32)


class RepeatFactorSampler(InfiniteSampler):
    """``rfs``: image ``I`` appears ``floor(r_I) + 1[u < frac(r_I)]`` times per epoch, shuffled.

    Args:
        repeat_thresh: ``t``; classes in fewer than a fraction ``t`` of images are oversampled.
        sqrt: LVIS's square-root rule (``False``: linear ``t / f_c``).
    """

    def __init__(self, dataset, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeat_thresh: float = 0.001, sqrt: bool = True):
        super().__init__(dataset, seed, rank, world_size)
        if repeat_thresh < 0:
            raise ValueError(f"RepeatFactorSampler: repeat_thresh must be >= 0, got {repeat_thresh}")
        self.repeat_thresh, self.sqrt = float(repeat_thresh), bool(sqrt)
        self.factors = repeat_factors([dataset.image_labels(i) for i in range(len(dataset))], repeat_thresh, sqrt)
        self._int_part = torch.trunc(self.factors)
        self._frac_part = self.factors - self._int_part

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        rands = torch.rand(len(self._frac_part), generator=generator)
        reps = (self._int_part + (rands < self._frac_part).float()).long()
        indices = torch.repeat_interleave(torch.arange(self.num_images), reps)
        return indices[torch.randperm(len(indices), generator=generator)]


class ClassAwareSampler(InfiniteSampler):
    """``class_aware``: draw a class uniformly (among classes with images), then an image of it.

    An "epoch" is ``len(dataset)`` draws; draws are i.i.d. given the generator.
    """

    def __init__(self, dataset, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(dataset, seed, rank, world_size)
        per_class: dict[int, list[int]] = {}
        for i in range(len(dataset)):
            for c in np.unique(dataset.image_labels(i)).tolist():
                per_class.setdefault(c, []).append(i)
        if not per_class:
            raise ValueError(f"ClassAwareSampler: no image of {getattr(dataset, 'ann_file', 'the dataset')} "
                             "has an annotation")
        self.classes = torch.tensor(sorted(per_class), dtype=torch.long)
        lists = [per_class[c] for c in sorted(per_class)]
        self._count = torch.tensor([len(v) for v in lists], dtype=torch.long)
        self._offset = torch.cumsum(self._count, 0) - self._count
        self._images = torch.tensor([i for v in lists for i in v], dtype=torch.long)

    def _epoch(self, generator: torch.Generator) -> torch.Tensor:
        k = torch.randint(len(self.classes), (self.num_images,), generator=generator)
        u = torch.rand(self.num_images, generator=generator, dtype=torch.float64)
        j = torch.minimum((u * self._count[k]).long(), self._count[k] - 1)
        return self._images[self._offset[k] + j]
