"""Mask head: ``num_conv`` 3x3 convs, 2x deconv, 1x1 predictor (class-specific or agnostic).

Only the mask of one class per RoI is ever needed (the ground-truth class in training, the
predicted class at test time), so the class-specific 1x1 predictor is evaluated for that
class alone: ``(R, D, M, M) . W[labels] (R, D)`` instead of ``R x C x M x M`` logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_head import conv_norm


class MaskHead(nn.Module):
    """``(R, C_in, S, S)`` pooled features, ``(R,)`` classes -> ``(R, 2S, 2S)`` mask logits."""

    def __init__(self, in_channels: int, num_classes: int, num_conv: int = 4, conv_dim: int = 256,
                 class_agnostic: bool = False, norm: str | None = None):
        super().__init__()
        self.convs = nn.Sequential(*(conv_norm(in_channels if i == 0 else conv_dim, conv_dim, norm)
                                     for i in range(num_conv)))
        dim = conv_dim if num_conv else in_channels
        self.deconv = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        self.class_agnostic = class_agnostic
        self.predictor = nn.Conv2d(dim, 1 if class_agnostic else num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        x = F.relu(self.deconv(self.convs(x)))
        if self.class_agnostic:
            return self.predictor(x)[:, 0]
        weight = self.predictor.weight[labels, :, 0, 0]  # (R, D)
        return torch.einsum("rdhw,rd->rhw", x, weight) + self.predictor.bias[labels, None, None]
