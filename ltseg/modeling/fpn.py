"""Feature Pyramid Network: C2..C5 -> P2..P6 (P6 = stride-2 subsampling of P5, as in Mask R-CNN)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Lateral 1x1 convs, nearest-neighbour top-down path, 3x3 output convs, max-pooled P6."""

    def __init__(self, in_channels: list[int], out_channels: int, in_strides: list[int]):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.out_channels = out_channels
        self.strides = [*in_strides, in_strides[-1] * 2]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[C2..C5]`` -> ``[P2..P6]``, each ``(B, out_channels, H_l, W_l)``."""
        inner = self.lateral[-1](features[-1])
        outs = [self.output[-1](inner)]
        for feature, lateral, output in zip(features[-2::-1], self.lateral[-2::-1], self.output[-2::-1]):
            lat = lateral(feature)
            inner = lat + F.interpolate(inner, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, output(inner))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
