"""Anchor generator: per FPN level, one set of (sizes x aspect ratios) cell anchors per location."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for every feature-map location, location-major then anchor-minor.

    ``sizes[l]`` are the anchor side lengths (pixels, sqrt of area) on level ``l`` with stride
    ``strides[l]``; ``aspect_ratios`` are h / w. Cell anchors are centred on the location's
    top-left pixel and rounded to integers (torchvision's convention).
    """

    def __init__(self, sizes: list[list[float]], aspect_ratios: list[float], strides: list[int]):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"AnchorGenerator: {len(sizes)} size lists for {len(strides)} levels")
        self.strides = [int(s) for s in strides]
        cells = [self._cell_anchors(s, aspect_ratios) for s in sizes]
        self.num_anchors_per_location = len(cells[0])
        for i, cell in enumerate(cells):
            self.register_buffer(f"cell_anchors_{i}", cell, persistent=False)
        self._cache: dict = {}

    @staticmethod
    def _cell_anchors(sizes: list[float], aspect_ratios: list[float]) -> Tensor:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32))
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def forward(self, feature_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Feature map sizes ``[(H_l, W_l)]`` -> per level ``(H_l * W_l * A, 4)`` xyxy anchors."""
        cell0 = self.cell_anchors_0
        key = (tuple(feature_sizes), cell0.device)
        if key not in self._cache:
            anchors = []
            for i, ((h, w), stride) in enumerate(zip(feature_sizes, self.strides)):
                cell = getattr(self, f"cell_anchors_{i}")
                xs = torch.arange(w, device=cell.device, dtype=torch.float32) * stride
                ys = torch.arange(h, device=cell.device, dtype=torch.float32) * stride
                sy, sx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
                anchors.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
            self._cache = {key: anchors}
        return self._cache[key]
