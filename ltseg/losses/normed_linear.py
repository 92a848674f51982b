"""Cosine classifier of the Seesaw release (mmdetection ``NormedLinear``)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class NormedLinear(nn.Linear):
    """``z = τ (x/(‖x‖+ε)) (W_k/(‖W_k‖+ε))ᵀ + b_k``; init W ~ N(0, 0.01²), b = 0.

    Args:
        in_features, out_features: as ``nn.Linear``.
        temperature: τ (mmdetection config key ``tempearture``; 20 for Seesaw).
        power: exponent of the norms (1).
        eps: ε added to the norms.
    """

    def __init__(self, in_features: int, out_features: int, temperature: float = 20.0,
                 power: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__(in_features, out_features)
        self.temperature, self.power, self.eps = temperature, power, eps
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        """``(R, in_features) -> (R, out_features)``."""
        w = self.weight / (self.weight.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        x = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        return F.linear(x * self.temperature, w, self.bias)
