"""Batching: pad images to a common size divisible by 32 and keep per-image targets as a list."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ltseg.data.masks import InstanceMasks

TARGET_KEYS = ("boxes", "labels", "masks", "pos_category_ids", "neg_category_ids",
               "not_exhaustive_category_ids")


def _move(value, device, non_blocking: bool):
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, InstanceMasks):
        return value.to(device)
    return value


@dataclass
class Batch:
    """One mini-batch.

    Attributes:
        images: ``(B, 3, Hp, Wp)`` float32, zero-padded at right/bottom; ``Hp, Wp`` multiples of
            ``size_divisibility``.
        image_sizes: per image ``(h, w)`` after resize, before padding.
        orig_sizes: per image ``(h, w)`` as stored on disk.
        image_ids: dataset image ids.
        targets: per image dict with ``boxes (N, 4)`` xyxy pixels, ``labels (N,)`` int64,
            ``masks`` (``InstanceMasks``), and the contiguous LVIS image-level sets
            ``pos_category_ids``, ``neg_category_ids``, ``not_exhaustive_category_ids``.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    image_ids: list[int]
    targets: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """Images and every target tensor (and dense masks) on ``device``."""
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            image_sizes=self.image_sizes,
            orig_sizes=self.orig_sizes,
            image_ids=self.image_ids,
            targets=[{k: _move(v, device, non_blocking) for k, v in t.items()} for t in self.targets],
        )

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(
            images=self.images.pin_memory(),
            image_sizes=self.image_sizes,
            orig_sizes=self.orig_sizes,
            image_ids=self.image_ids,
            targets=[{k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in t.items()}
                     for t in self.targets],
        )


def pad_images(images: Sequence[Tensor], size_divisibility: int = 32) -> Tensor:
    """``[(3, h_i, w_i)]`` -> ``(B, 3, Hp, Wp)`` zero-padded at right/bottom, ``Hp, Wp`` divisible."""
    if not images:
        raise ValueError("pad_images: empty batch")
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    out = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out


def collate(samples: Sequence[dict], size_divisibility: int = 32) -> Batch:
    """Dataset samples (docs/interfaces.md) -> ``Batch``."""
    return Batch(
        images=pad_images([s["image"] for s in samples], size_divisibility),
        image_sizes=[tuple(int(v) for v in s["image_size"]) for s in samples],
        orig_sizes=[tuple(int(v) for v in s["orig_size"]) for s in samples],
        image_ids=[int(s["image_id"]) for s in samples],
        targets=[{k: s[k] for k in TARGET_KEYS if k in s} for s in samples],
    )

