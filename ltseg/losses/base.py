"""The classification-loss interface every long-tail method implements.

A loss owns three decisions: how many logits the classifier emits (``num_logits``), the
training objective (``forward``) and the test-time class probabilities (``scores``). A
method that needs its own classifier layer (Seesaw's normalised linear layer) overrides
``make_predictor``. Nothing else in the model knows which loss is in use.

Label convention: ``labels`` in ``0..C`` with ``C`` = background.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ltseg.data.category_stats import CategoryStats


@dataclass
class LossContext:
    """Everything a classification loss may read besides the logits.

    Attributes:
        labels: ``(R,)`` int64 in ``0..C``; ``C`` is background.
        stats: training category statistics.
        image_pos: ``(R, C)`` bool, class j annotated in the RoI's image (LVIS pos set).
        image_neg: ``(R, C)`` bool, class j in the image's ``neg_category_ids``.
        generator: RNG for stochastic methods when ``noise`` is not given.
        noise: ``(R, C)`` i.i.d. U[0, 1) for stochastic methods (overrides ``generator``).
        iteration: training iteration, used in error messages.
    """

    labels: Tensor
    stats: CategoryStats
    image_pos: Tensor | None = None
    image_neg: Tensor | None = None
    generator: torch.Generator | None = None
    noise: Tensor | None = None
    iteration: int | None = None

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes

    def uniform_noise(self, like: Tensor, out: Tensor | None = None) -> Tensor:
        """``noise`` if injected, else ``U[0,1)`` of shape ``(R, C)`` from ``generator``.

        ``out``: optional float32 workspace on ``like``'s device that a draw fills in place (the
        same stream as a fresh tensor); injected noise is returned as is.
        """
        r, c = like.shape[0], self.num_classes
        if self.noise is not None:
            if tuple(self.noise.shape) != (r, c):
                raise ValueError(f"LossContext.noise has shape {tuple(self.noise.shape)}, expected ({r}, {c})")
            return self.noise.to(device=like.device, dtype=torch.float32, non_blocking=True)
        if self.generator is not None and self.generator.device != like.device:
            return torch.rand(r, c, generator=self.generator).to(like.device, non_blocking=True)
        if out is not None and out.dtype == torch.float32 and out.device == like.device:
            return out.resize_(r, c).uniform_(generator=self.generator)
        return torch.rand(r, c, generator=self.generator, device=like.device)


class ClassificationLoss(nn.Module):
    """Base class: subclasses implement ``num_logits``, ``forward`` and ``scores``."""

    #: classifier bias at initialisation (the sigmoid family uses the prior-probability bias)
    def init_bias(self) -> float:
        return 0.0

    def num_logits(self, num_classes: int) -> int:
        raise NotImplementedError

    def forward(self, logits: Tensor, ctx: LossContext) -> Tensor:  # scalar
        raise NotImplementedError

    def scores(self, logits: Tensor) -> Tensor:
        """``(R, num_logits)`` logits -> ``(R, C+1)`` probabilities, last column background."""
        raise NotImplementedError

    def make_predictor(self, in_features: int, num_classes: int) -> nn.Module:
        """Classifier layer ``(R, in_features) -> (R, num_logits)``: N(0, 0.01²) weights."""
        layer = nn.Linear(in_features, self.num_logits(num_classes))
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.constant_(layer.bias, self.init_bias())
        return layer

    @staticmethod
    def checks_eagerly(device: torch.device) -> bool:
        """Whether ``check_inputs`` tests finiteness on the host: on CPU (free); not on CUDA or other
        accelerators, where reading the result back is a host sync each step (``guard_nonfinite``)."""
        return device.type == "cpu"

    def check_inputs(self, logits: Tensor, ctx: LossContext) -> Tensor:
        """Validate shapes (and, on CPU, finiteness); return the logits in float32 (losses run in fp32).

        Raises ``FloatingPointError`` naming the loss and ``ctx.iteration`` for non-finite logits
        on CPU. Elsewhere no host sync: the loss passes its value through ``guard_nonfinite``
        and the trainer skips the non-finite step.
        """
        expected = self.num_logits(ctx.num_classes)
        if logits.dim() != 2 or logits.shape[1] != expected:
            raise ValueError(
                f"{type(self).__name__}: logits have shape {tuple(logits.shape)}, expected "
                f"(R, {expected}) for {ctx.num_classes} classes"
            )
        if ctx.labels.shape != (logits.shape[0],):
            raise ValueError(f"{type(self).__name__}: labels shape {tuple(ctx.labels.shape)} != ({logits.shape[0]},)")
        # one cheap sum first; only a non-finite sum (non-finite logits, or an overflow) runs the exact test
        if self.checks_eagerly(logits.device) and not torch.isfinite(logits.sum()) and not torch.isfinite(logits).all():
            where = f" at iteration {ctx.iteration}" if ctx.iteration is not None else ""
            raise FloatingPointError(f"{type(self).__name__}: non-finite classification logits{where}")
        return logits.float()

    def guard_nonfinite(self, logits: Tensor, loss: Tensor) -> Tensor:
        """``loss``, or NaN when any logit is non-finite and ``check_inputs`` did not test it eagerly.

        Device-side (no sync): whatever a method does with the logits (masking, dropping
        columns), a non-finite logit always reaches the trainer as a non-finite loss.
        """
        if self.checks_eagerly(logits.device):
            return loss
        return torch.where(torch.isfinite(logits).all(), loss, float("nan"))


def prior_bias(prior_prob: float) -> float:
    """Focal-loss style bias ``-log((1 - π) / π)`` so that ``sigmoid(bias) = π``."""
    return -math.log((1.0 - prior_prob) / prior_prob)


LOSSES: dict[str, type[ClassificationLoss]] = {}


def register_loss(name: str) -> Callable[[type[ClassificationLoss]], type[ClassificationLoss]]:
    """Class decorator: make a loss available under ``name`` (also its conf/loss/<name>.yaml)."""

    def deco(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
        if name in LOSSES:
            raise ValueError(f"loss '{name}' registered twice")
        LOSSES[name] = cls
        return cls

    return deco


def build_loss(name: str, **kwargs) -> ClassificationLoss:
    """Instantiate a registered loss by name; an unknown name lists the available ones."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; available: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)
