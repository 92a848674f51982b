"""Box head (``num_conv`` 3x3 convs then ``num_fc`` FCs: 2fc or 4conv1fc) and box predictor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltseg.losses.base import ClassificationLoss


def conv_norm(in_channels: int, out_channels: int, norm: str | None, num_groups: int = 32) -> nn.Sequential:
    """3x3 conv (+ GroupNorm when ``norm == "GN"``) + ReLU."""
    if norm not in (None, "", "GN"):
        raise ValueError(f"head norm '{norm}': only null or GN")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.GroupNorm(min(num_groups, out_channels), out_channels))
    layers.append(nn.ReLU(inplace=True))
    nn.init.kaiming_normal_(layers[0].weight, mode="fan_out", nonlinearity="relu")
    if layers[0].bias is not None:
        nn.init.zeros_(layers[0].bias)
    return nn.Sequential(*layers)


class BoxHead(nn.Module):
    """``(R, C, S, S)`` pooled features -> ``(R, fc_dim)``.

    ``num_conv=0, num_fc=2`` is Mask R-CNN's 2fc-1024 head (``fc.0`` / ``fc.1`` are
    torchvision's ``fc6`` / ``fc7``); ``num_conv=4, num_fc=1, norm=GN`` is 4conv1fc.
    """

    def __init__(self, in_channels: int, pooler_size: int, num_conv: int = 0, conv_dim: int = 256,
                 num_fc: int = 2, fc_dim: int = 1024, norm: str | None = None):
        super().__init__()
        self.convs = nn.Sequential(*(conv_norm(in_channels if i == 0 else conv_dim, conv_dim, norm)
                                     for i in range(num_conv)))
        flat = (conv_dim if num_conv else in_channels) * pooler_size ** 2
        self.fc = nn.ModuleList(nn.Linear(flat if i == 0 else fc_dim, fc_dim) for i in range(num_fc))
        self.out_features = fc_dim if num_fc else flat

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x).flatten(1)
        for layer in self.fc:
            x = F.relu(layer(x))
        return x


class BoxPredictor(nn.Module):
    """Classification logits (layer made by the loss) and class-specific or agnostic box deltas.

    ``forward(x (R, D)) -> (logits (R, loss.num_logits(C)), deltas (R, 4C) or (R, 4))``.
    """

    def __init__(self, in_features: int, num_classes: int, loss: ClassificationLoss, class_agnostic: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.cls_score = loss.make_predictor(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)

    def select_deltas(self, deltas: Tensor, labels: Tensor) -> Tensor:
        """``(R, 4C | 4)`` deltas, ``(R,)`` class indices in ``0..C-1`` -> ``(R, 4)`` that class's deltas."""
        if self.class_agnostic:
            return deltas
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        return deltas.view(deltas.shape[0], deltas.shape[1] // 4, 4)[rows, labels]
