"""SimCal bi-level sampling: class-balanced at the image level and at the proposal level.

Image level (``BilevelSampler``): each step draws ``n`` classes uniformly **with replacement**
from the classes that have at least one training image, then one image per drawn class
(uniformly, with replacement) among the images containing it. Proposal level
(``select_balanced_proposals``): keep only the foreground proposals whose label is the class
its image was drawn for, and as many background proposals, drawn at random (1:1).
Reference: twangnh/SimCal ``EpisodicSampler`` (tau = 0) and ``compose_training_data``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class BilevelDraw:
    """One calibration step.

    Attributes:
        classes: ``(n,)`` int64 sampled class indices (with repetitions).
        image_indices: ``(n * m,)`` int64 dataset indices, ``m`` images per class in order.
        image_classes: ``(n * m,)`` int64 the class each image was drawn for.
    """

    classes: Tensor
    image_indices: Tensor
    image_classes: Tensor


class BilevelSampler:
    """Infinite iterator of ``BilevelDraw`` (one per calibration step).

    Args:
        class_images: per class ``k`` the dataset indices of the training images containing it.
        classes_per_step: ``n``, classes drawn per step (SimCal: 16).
        images_per_class: images drawn per sampled class (SimCal: 1).
        generator: the RNG of every draw (a seeded ``torch.Generator``).
        names: class names for the exclusion message (default ``str(k)``).
    """

    def __init__(
        self,
        class_images: Sequence[Sequence[int] | Tensor],
        classes_per_step: int = 16,
        images_per_class: int = 1,
        generator: torch.Generator | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if classes_per_step < 1 or images_per_class < 1:
            raise ValueError(
                f"BilevelSampler: classes_per_step ({classes_per_step}) and images_per_class "
                f"({images_per_class}) must be >= 1"
            )
        self.num_classes = len(class_images)
        self.class_images = [torch.as_tensor(list(map(int, x)) if not isinstance(x, Tensor) else x,
                                             dtype=torch.int64).unique() for x in class_images]
        sizes = torch.tensor([len(x) for x in self.class_images], dtype=torch.int64)
        self.eligible = torch.nonzero(sizes > 0).flatten()
        self.excluded = torch.nonzero(sizes == 0).flatten()
        if self.eligible.numel() == 0:
            raise ValueError("BilevelSampler: no class has a training image; nothing to calibrate on")
        if self.excluded.numel():
            label = [names[k] if names is not None else str(k) for k in self.excluded.tolist()]
            shown = ", ".join(label[:20]) + (" ..." if len(label) > 20 else "")
            msg = (f"BilevelSampler: {len(label)} of {self.num_classes} classes have zero training "
                   f"images and are excluded from calibration sampling: {shown}")
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
        self.classes_per_step = classes_per_step
        self.images_per_class = images_per_class
        self.generator = generator

    @classmethod
    def from_image_labels(cls, image_labels: Sequence[Tensor], num_classes: int, **kwargs) -> "BilevelSampler":
        """Build from per-image label sets: ``image_labels[i]`` = classes present in image ``i``."""
        class_images: list[list[int]] = [[] for _ in range(num_classes)]
        for i, labels in enumerate(image_labels):
            for k in torch.as_tensor(labels).unique().tolist():
                if not 0 <= k < num_classes:
                    raise ValueError(f"BilevelSampler: image {i} has label {k} outside 0..{num_classes - 1}")
                class_images[k].append(i)
        return cls(class_images, **kwargs)

    @classmethod
    def from_dataset(cls, dataset, **kwargs) -> "BilevelSampler":
        """Build from an ``LVISDataset`` (``image_labels(i)``, ``stats``)."""
        stats = dataset.stats
        labels = [dataset.image_labels(i) for i in range(len(dataset))]
        return cls.from_image_labels(labels, stats.num_classes, names=stats.names, **kwargs)

    def sample(self) -> BilevelDraw:
        """Draw ``n`` classes uniformly with replacement, then ``m`` images per class."""
        g = self.generator
        n, m = self.classes_per_step, self.images_per_class
        classes = self.eligible[torch.randint(len(self.eligible), (n,), generator=g)]
        images = []
        for k in classes.tolist():
            pool = self.class_images[k]
            images.append(pool[torch.randint(len(pool), (m,), generator=g)])
        return BilevelDraw(classes, torch.cat(images), classes.repeat_interleave(m))

    def __iter__(self) -> Iterator[BilevelDraw]:
        while True:
            yield self.sample()


def select_balanced_proposals(
    labels: Tensor,
    roi_image: Tensor,
    image_classes: Tensor,
    background: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the proposals one calibration step trains on.

    Args:
        labels: ``(R,)`` int64 matched labels in ``0..C`` (``C`` = ``background``).
        roi_image: ``(R,)`` int64 batch image index of each proposal.
        image_classes: ``(B,)`` int64 class each image of the batch was drawn for.
        background: the background label ``C``.
        generator: RNG of the background subsample.

    Returns:
        ``(K,)`` int64: every foreground proposal whose label is its image's drawn class,
        then ``min(#kept fg, #bg)`` background proposals drawn without replacement.
    """
    fg = torch.nonzero(labels == image_classes.to(labels.device)[roi_image]).flatten()
    bg = torch.nonzero(labels == background).flatten()
    order = torch.randperm(bg.numel(), generator=generator).to(bg.device)
    return torch.cat([fg, bg[order[: fg.numel()]]])
