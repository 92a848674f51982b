"""ResNet backbone from torchvision blocks: C2..C5 feature maps (strides 4, 8, 16, 32)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

DEPTHS = {
    18: (resnet.BasicBlock, (2, 2, 2, 2)),
    34: (resnet.BasicBlock, (3, 4, 6, 3)),
    50: (resnet.Bottleneck, (3, 4, 6, 3)),
    101: (resnet.Bottleneck, (3, 4, 23, 3)),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetBody(nn.Module):
    """torchvision's ResNet (same blocks, module names and init) without the classifier, with a
    configurable base ``width`` (64 = the standard networks; torchvision's weights need 64)."""

    def __init__(self, depth: int, norm, width: int = 64):
        super().__init__()
        block, counts = DEPTHS[depth]
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (name, count) in enumerate(zip(STAGES, counts)):
            setattr(self, name, self._make_stage(block, width * 2 ** i, count, 1 if i == 0 else 2, norm))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.out_channels = [width * 2 ** i * block.expansion for i in range(4)]

    def _make_stage(self, block, planes: int, count: int, stride: int, norm) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(resnet.conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=norm) for _ in range(count - 1)]
        return nn.Sequential(*layers)


def norm_layer(kind: str, num_groups: int = 32):
    """``"FrozenBN"`` (pretrained weights), ``"BN"`` or ``"GN"`` (training from scratch)."""
    if kind == "FrozenBN":
        return FrozenBatchNorm2d
    if kind == "BN":
        return nn.BatchNorm2d
    if kind == "GN":
        return lambda channels: nn.GroupNorm(min(num_groups, channels), channels)
    raise ValueError(f"model.backbone.norm: unknown norm '{kind}' (FrozenBN | BN | GN)")


class ResNetBackbone(nn.Module):
    """ResNet ``body`` (``ResNetBody``); ``forward`` returns ``[C2, C3, C4, C5]``.

    ``freeze_at``: 0 trains everything, 1 freezes the stem, ``k >= 2`` also freezes
    ``layer1..layer{k-1}`` (detectron2's convention; torchvision's ``trainable_layers=3`` is 2).
    """

    def __init__(self, depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 0, weights: str | None = None,
                 num_groups: int = 32, width: int = 64):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"model.backbone.depth: {depth} not in {sorted(DEPTHS)}")
        self.body = ResNetBody(depth, norm_layer(norm, num_groups), width)
        if weights is not None:
            self.load_weights(weights)
        self.out_channels = self.body.out_channels
        self.strides = [4, 8, 16, 32]
        self.freeze(freeze_at)

    def load_weights(self, path: str) -> None:
        """Load a torchvision-format ResNet state dict (``fc.*`` ignored) from a local file."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"model.backbone.weights: no file at '{path}' (set model.backbone.weights to a local "
                f"torchvision ResNet state dict, or null to train from scratch; nothing is downloaded)"
            )
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        expected = {k: v for k, v in self.body.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"model.backbone.weights '{path}': not a torchvision ResNet state dict for this depth "
                f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]}; torchvision "
                f"weights need model.backbone.width=64)"
            )
        self.body.load_state_dict(state, strict=False)

    def freeze(self, freeze_at: int) -> None:
        frozen = ([self.body.conv1, self.body.bn1] if freeze_at >= 1 else []) + [
            getattr(self.body, name) for name in STAGES[: max(freeze_at - 1, 0)]
        ]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        out = []
        for name in STAGES:
            x = getattr(b, name)(x)
            out.append(x)
        return out
