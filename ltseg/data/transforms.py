"""Per-sample geometric and photometric transforms: resize (scale jitter), flip, normalise.

Randomness comes only from the ``torch.Generator`` passed per call, so a sample's transform is
a function of its seed, whatever worker process runs it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
PIXEL_STD = (58.395, 57.12, 57.375)


def resized_shape(h: int, w: int, short_edge: int, max_size: int | None) -> tuple[int, int]:
    """Shortest edge to ``short_edge``, longest edge capped at ``max_size`` (detectron2 rounding)."""
    scale = short_edge / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max_size is not None and max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: Tensor, new_h: int, new_w: int) -> Tensor:
    """``(3, H, W)`` float -> ``(3, new_h, new_w)``, bilinear with antialiasing when shrinking."""
    if tuple(image.shape[-2:]) == (new_h, new_w):
        return image
    return F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                         align_corners=False, antialias=True)[0]


class DetectionTransform:
    """Resize (random choice of shortest edge), optional horizontal flip, normalisation.

    Args:
        min_sizes: shortest-edge choices in pixels (one is drawn per sample); ``None`` = no resize.
        max_size: cap on the longest edge after resize (``None`` = no cap).
        flip_prob: probability of a horizontal flip.
        mean, std: per-channel RGB normalisation on the 0-255 scale.
    """

    def __init__(self, min_sizes: Sequence[int] | int | None = None, max_size: int | None = None,
                 flip_prob: float = 0.0, mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD):
        if isinstance(min_sizes, int):
            min_sizes = [min_sizes]
        self.min_sizes = [int(s) for s in min_sizes] if min_sizes else []
        self.max_size = int(max_size) if max_size else None
        self.flip_prob = float(flip_prob)
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def is_random(self) -> bool:
        return len(self.min_sizes) > 1 or self.flip_prob > 0

    def __repr__(self) -> str:
        return (f"DetectionTransform(min_sizes={self.min_sizes}, max_size={self.max_size}, "
                f"flip_prob={self.flip_prob})")

    def __call__(self, image: Tensor, target: dict, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """``image (3, H, W)`` uint8/float 0-255 RGB; ``target`` with ``boxes (N, 4)`` xyxy, ``masks``.

        Returns the normalised float32 image and a new target dict with the geometry applied.
        """
        if self.is_random and generator is None:
            raise ValueError("DetectionTransform: a random transform needs an explicit torch.Generator")
        image = image.float()
        h, w = image.shape[-2:]
        target = dict(target)
        if self.min_sizes:
            k = int(torch.randint(len(self.min_sizes), (1,), generator=generator)) if len(self.min_sizes) > 1 else 0
            new_h, new_w = resized_shape(h, w, self.min_sizes[k], self.max_size)
            if (new_h, new_w) != (h, w):
                image = resize_image(image, new_h, new_w)
                scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=torch.float32)
                target["boxes"] = target["boxes"] * scale
                target["masks"] = target["masks"].resize(new_h, new_w)
                h, w = new_h, new_w
        if self.flip_prob > 0 and float(torch.rand(1, generator=generator)) < self.flip_prob:
            image = image.flip(-1)
            boxes = target["boxes"]
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            target["masks"] = target["masks"].flip_horizontal()
        image = (image - self.mean) / self.std
        return image.contiguous(), target


def build_transform(data_cfg, split: str) -> DetectionTransform:
    """Train: scale jitter over ``min_size_train``, ``max_size_train``, ``flip_prob``; val: fixed test size."""
    if split == "train":
        return DetectionTransform(list(data_cfg.min_size_train), data_cfg.max_size_train, data_cfg.flip_prob)
    return DetectionTransform(data_cfg.min_size_test, data_cfg.max_size_test, 0.0)
