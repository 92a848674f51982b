"""Box <-> regression-delta coding (the R-CNN parameterisation, torchvision's arithmetic).

Deltas ``(dx, dy, dw, dh)`` of a box relative to a reference box, scaled by per-stage
``weights`` (RPN ``(1, 1, 1, 1)``, Fast R-CNN ``(10, 10, 5, 5)``, Cascade stages 2/3 use
``(20, 20, 10, 10)`` / ``(30, 30, 15, 15)``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: largest ``dw``/``dh`` decoded, so ``exp`` cannot overflow (boxes at most 1000/16 x the reference)
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode/decode xyxy boxes as weighted deltas to reference boxes."""

    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, targets: Tensor, references: Tensor) -> Tensor:
        """``(N, 4)`` target boxes, ``(N, 4)`` reference boxes -> ``(N, 4)`` deltas."""
        wx, wy, ww, wh = self.weights
        ref_w = references[:, 2] - references[:, 0]
        ref_h = references[:, 3] - references[:, 1]
        ref_x = references[:, 0] + 0.5 * ref_w
        ref_y = references[:, 1] + 0.5 * ref_h
        gt_w = targets[:, 2] - targets[:, 0]
        gt_h = targets[:, 3] - targets[:, 1]
        gt_x = targets[:, 0] + 0.5 * gt_w
        gt_y = targets[:, 1] + 0.5 * gt_h
        return torch.stack(
            (
                wx * (gt_x - ref_x) / ref_w,
                wy * (gt_y - ref_y) / ref_h,
                ww * torch.log(gt_w / ref_w),
                wh * torch.log(gt_h / ref_h),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """``(N, 4k)`` deltas (k boxes per reference, e.g. one per class), ``(N, 4)`` -> ``(N, 4k)`` boxes.

        Computed in at least float32 (half-precision deltas under AMP would cost pixels)."""
        dtype = torch.promote_types(torch.promote_types(deltas.dtype, references.dtype), torch.float32)
        deltas, references = deltas.to(dtype), references.to(dtype)
        wx, wy, ww, wh = self.weights
        ref_w = references[:, 2] - references[:, 0]
        ref_h = references[:, 3] - references[:, 1]
        ref_x = references[:, 0] + 0.5 * ref_w
        ref_y = references[:, 1] + 0.5 * ref_h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        ctr_x = dx * ref_w[:, None] + ref_x[:, None]
        ctr_y = dy * ref_h[:, None] + ref_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * ref_w[:, None])
        half_h = 0.5 * (torch.exp(dh) * ref_h[:, None])
        boxes = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=2)
        return boxes.flatten(1)
