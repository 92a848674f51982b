"""Multi-scale RoIAlign: each RoI is pooled from the FPN level that matches its size."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


def assign_levels(boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float = 224.0,
                  canonical_level: int = 4, eps: float = 1e-6) -> Tensor:
    """FPN paper eq. (1): ``floor(k0 + log2(sqrt(area) / 224))`` clamped to the pyramid.

    ``boxes (R, 4)`` xyxy -> ``(R,)`` int64 level index relative to ``min_level``.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size) + eps)
    return (level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level)


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image ``(R_i, 4)`` boxes -> ``(sum R_i, 5)`` rows ``(image index, x0, y0, x1, y1)``."""
    idx = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(boxes)], dim=1)


class MultiScaleRoIAlign(nn.Module):
    """Pool ``(R, C, S, S)`` features for RoIs from levels with ``strides`` (e.g. 4, 8, 16, 32).

    ``aligned=True`` is the pixel-exact RoIAlign (detectron2 ROIAlignV2); torchvision's
    Mask R-CNN uses ``aligned=False`` (set it to reproduce torchvision's numbers).
    """

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int = 0, aligned: bool = True,
                 canonical_box_size: float = 224.0, canonical_level: int = 4):
        super().__init__()
        self.output_size = int(output_size)
        self.strides = [int(s) for s in strides]
        self.min_level = int(round(math.log2(self.strides[0])))
        self.max_level = int(round(math.log2(self.strides[-1])))
        if [2 ** (self.min_level + i) for i in range(len(strides))] != self.strides:
            raise ValueError(f"MultiScaleRoIAlign: strides {strides} are not consecutive powers of two")
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """``features[l] (B, C, H_l, W_l)``, per-image ``boxes (R_i, 4)`` -> ``(sum R_i, C, S, S)``."""
        # at least float32: half-precision RoI coordinates would be off by pixels (torchvision's
        # autocast rule for roi_align computes in float32 as well)
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        rois = boxes_to_rois(boxes).to(dtype)
        s = self.output_size
        if len(features) == 1:
            return roi_align(features[0].to(dtype), rois, s, 1.0 / self.strides[0], self.sampling_ratio, self.aligned)
        levels = assign_levels(rois[:, 1:], self.min_level, self.max_level, self.canonical_box_size,
                               self.canonical_level)
        out = rois.new_zeros((rois.shape[0], features[0].shape[1], s, s))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feature.to(dtype), rois[idx], s, 1.0 / stride, self.sampling_ratio, self.aligned)
        return out
