"""Per-category training statistics shared by losses, samplers, calibration and the evaluator.

Always computed from the TRAINING annotations. Contiguous class index ``k`` in ``0..C-1``
maps to dataset category id ``category_ids[k]`` (sorted ascending, as LVIS and detectron2 do).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

RARE_MAX_IMAGES = 10     # LVIS rule: r = 1..10 training images
COMMON_MAX_IMAGES = 100  # c = 11..100, f > 100
GROUPS = ("r", "c", "f")


def frequency_group(image_count: int) -> str:
    """LVIS frequency tag from a training image count."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    if image_count <= COMMON_MAX_IMAGES:
        return "c"
    return "f"


@dataclass(frozen=True, eq=False)
class CategoryStats:
    """Training statistics, one entry per contiguous class index.

    Attributes:
        category_ids: dataset category id per class, ``(C,)``.
        image_count: training images containing the class, int64 ``(C,)``.
        instance_count: training instances of the class, int64 ``(C,)``.
        num_images: number of training images (denominator of ``image_freq``).
        frequency: ``'r' | 'c' | 'f'`` per class, by the LVIS rule on ``image_count``.
        names: category names (``str(id)`` when unknown).
        split: which split the counts come from; losses refuse anything but ``"train"``.
    """

    category_ids: tuple[int, ...]
    image_count: torch.Tensor
    instance_count: torch.Tensor
    num_images: int
    frequency: tuple[str, ...]
    names: tuple[str, ...]
    split: str = "train"
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = len(self.category_ids)
        if self.image_count.shape != (c,) or self.instance_count.shape != (c,):
            raise ValueError(
                f"CategoryStats: image_count {tuple(self.image_count.shape)} and instance_count "
                f"{tuple(self.instance_count.shape)} must both have shape ({c},)"
            )
        if len(self.frequency) != c or len(self.names) != c:
            raise ValueError("CategoryStats: frequency and names need one entry per category")
        if len(set(self.category_ids)) != c:
            raise ValueError("CategoryStats: duplicate category ids")
        self._index.update({cid: k for k, cid in enumerate(self.category_ids)})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryStats) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable tensors inside: not hashable

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_counts(
        cls,
        image_count: Sequence[int] | np.ndarray | torch.Tensor,
        instance_count: Sequence[int] | np.ndarray | torch.Tensor,
        num_images: int,
        category_ids: Sequence[int] | None = None,
        names: Sequence[str] | None = None,
        split: str = "train",
    ) -> "CategoryStats":
        """Build from arrays; frequency groups follow the LVIS rule."""
        img = torch.as_tensor(np.asarray(image_count), dtype=torch.int64).reshape(-1)
        ins = torch.as_tensor(np.asarray(instance_count), dtype=torch.int64).reshape(-1)
        c = img.numel()
        ids = tuple(int(i) for i in (category_ids if category_ids is not None else range(1, c + 1)))
        if num_images <= 0:
            raise ValueError(f"CategoryStats: num_images must be positive, got {num_images}")
        if bool((img < 0).any()) or bool((ins < img).any()):
            raise ValueError("CategoryStats: counts must satisfy 0 <= image_count <= instance_count")
        return cls(
            category_ids=ids,
            image_count=img,
            instance_count=ins,
            num_images=int(num_images),
            frequency=tuple(frequency_group(int(n)) for n in img),
            names=tuple(names) if names is not None else tuple(str(i) for i in ids),
            split=split,
        )

    @classmethod
    def from_lvis_dict(cls, data: Mapping, split: str = "train", source: str = "<dict>") -> "CategoryStats":
        """Count images and instances per category from LVIS/COCO-format annotations.

        Crowd annotations (``iscrowd=1``) are not counted. ``num_images`` is the number of
        images in the file (EQL's tables use images with annotations; see docs/losses.md).
        """
        if "categories" not in data:
            raise ValueError(f"{source}: no 'categories' list in annotation file")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        ids = [int(c["id"]) for c in cats]
        index = {cid: k for k, cid in enumerate(ids)}
        img_sets: list[set] = [set() for _ in ids]
        inst = np.zeros(len(ids), dtype=np.int64)
        for ann in data.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            k = index.get(ann["category_id"])
            if k is None:
                raise ValueError(
                    f"{source}: annotation {ann.get('id')} has unknown category_id {ann['category_id']}"
                )
            inst[k] += 1
            img_sets[k].add(ann["image_id"])
        num_images = len(data.get("images", []))
        if num_images == 0:
            raise ValueError(f"{source}: no images in annotation file")
        return cls.from_counts(
            [len(s) for s in img_sets], inst, num_images, ids,
            [c.get("name", str(c["id"])) for c in cats], split,
        )

    @classmethod
    def from_json(cls, path: str | Path, split: str = "train") -> "CategoryStats":
        with open(path) as f:
            return cls.from_lvis_dict(json.load(f), split=split, source=str(path))

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def image_freq(self) -> torch.Tensor:
        """EQL's ``f_j`` = image_count / num_images, float64 ``(C,)``."""
        return self.image_count.double() / self.num_images

    @property
    def group_index(self) -> torch.Tensor:
        """0 = rare, 1 = common, 2 = frequent, int64 ``(C,)``."""
        return torch.tensor([GROUPS.index(g) for g in self.frequency], dtype=torch.int64)

    @property
    def tail(self) -> torch.Tensor:
        """Tail set of EQL/DropLoss: rare or common, bool ``(C,)``."""
        return self.group_index < 2

    def index_of(self, category_id: int) -> int:
        """Contiguous index of a dataset category id (KeyError names the id)."""
        try:
            return self._index[category_id]
        except KeyError:
            raise KeyError(f"unknown category id {category_id}") from None

    def require_train(self, who: str) -> None:
        if self.split != "train":
            raise ValueError(
                f"{who}: category statistics come from the '{self.split}' split; "
                "long-tail methods must use the training split"
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain-Python form, safe for ``torch.save`` with ``weights_only=True`` and JSON."""
        return {
            "category_ids": list(self.category_ids),
            "image_count": self.image_count.tolist(),
            "instance_count": self.instance_count.tolist(),
            "num_images": self.num_images,
            "names": list(self.names),
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "CategoryStats":
        return cls.from_counts(
            d["image_count"], d["instance_count"], d["num_images"],
            d["category_ids"], d["names"], d.get("split", "train"),
        )
