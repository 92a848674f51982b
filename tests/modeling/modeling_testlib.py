"""Shared helpers for the modeling tests: a local softmax-CE loss, configs, synthetic batches."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss
from ltseg.modeling.roi_heads import StandardROIHeads

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


class LocalCE(ClassificationLoss):
    """Softmax cross-entropy over C+1 logits, background last (kept local: tests own their oracle)."""

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1

    def forward(self, logits, ctx):
        return F.cross_entropy(self.check_inputs(logits, ctx), ctx.labels)

    def scores(self, logits):
        return F.softmax(logits.float(), dim=-1)


def model_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def make_stats(num_classes: int) -> CategoryStats:
    return CategoryStats.from_counts([5] * num_classes, [8] * num_classes, num_images=20)


def make_batch(num_classes: int, size=(256, 256), num_images: int = 2, seed: int = 0):
    """Random images with 1-3 rectangles each; masks as (N, H, W) bool tensors."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.randn(num_images, 3, h, w, generator=g)
    targets = []
    for i in range(num_images):
        n = 1 + i % 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 24 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[k, y0:y1, x0:x1] = True
            images[i, :, y0:y1, x0:x1] += 1.5 * (k + 1)
        labels = torch.randint(num_classes, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks, "image_id": i,
                        "pos_category_ids": torch.tensor([], dtype=torch.int64),
                        "neg_category_ids": torch.tensor([(int(labels[0]) + 1) % num_classes])})
    return images, [size] * num_images, targets


class RecordingROIHeads(StandardROIHeads):
    """Selected through ``roi_heads._target_`` (what the cascade config does)."""

    built = False

    @classmethod
    def from_config(cls, *args, **kwargs):
        RecordingROIHeads.built = True
        return super().from_config(*args, **kwargs)
