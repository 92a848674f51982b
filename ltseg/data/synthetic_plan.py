"""What each synthetic image contains, decided before any pixel is drawn (numpy only, cheap).

The plan fixes the long tail: per-category training image counts are the quantiles of a
truncated power law ``p(n) ∝ n^-a`` on ``[1, n_max]`` (``a`` = ``tail_exponent``), so the
rare/common/frequent split is the same for every seed. Categories are then spread over the
images by weighted sampling without replacement on each image's remaining capacity, which gives
1..max_distinct categories per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star",
          "ring", "cross", "crescent", "diamond", "heart", "arrow")
COLOURS = {  # RGB on 0..255
    "red": (215, 40, 40), "orange": (245, 140, 25), "yellow": (240, 215, 40),
    "green": (45, 165, 60), "cyan": (40, 200, 215), "blue": (40, 75, 215),
    "purple": (135, 55, 195), "pink": (250, 135, 195), "brown": (125, 75, 35),
    "white": (240, 240, 240),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")


@dataclass(frozen=True)
class Category:
    shape: str
    colour: str
    pattern: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.pattern}_{self.shape}"

    @property
    def definition(self) -> str:
        fill = "plain" if self.pattern == "solid" else self.pattern
        return f"a {fill} {self.colour} {self.shape}"


@dataclass(frozen=True)
class ImagePlan:
    """One image: objects in drawing order as (category index, annotated), and its LVIS sets."""

    image_id: int
    objects: tuple[tuple[int, bool], ...]
    neg_categories: tuple[int, ...]
    not_exhaustive: tuple[int, ...]


def choose_categories(num_categories: int, rng: np.random.Generator) -> list[Category]:
    """``num_categories`` distinct shape x colour x pattern combinations, in a seeded order."""
    table = list(product(SHAPES, COLOURS, PATTERNS))
    if not 1 <= num_categories <= len(table):
        raise ValueError(f"num_categories must be in 1..{len(table)}, got {num_categories}")
    pick = rng.permutation(len(table))[:num_categories]
    return [Category(*table[i]) for i in pick]


def confusable(categories: list[Category]) -> list[np.ndarray]:
    """Per category, the indices of categories sharing exactly two of three attributes."""
    attrs = np.array([[SHAPES.index(c.shape), list(COLOURS).index(c.colour),
                       PATTERNS.index(c.pattern)] for c in categories])
    shared = (attrs[:, None, :] == attrs[None, :, :]).sum(-1)
    return [np.nonzero(row == 2)[0] for row in shared]


def power_law_counts(num_categories: int, tail_exponent: float, max_count: int) -> np.ndarray:
    """Quantiles ``(k + 0.5) / C`` of ``p(n) ∝ n^-a`` on ``[0.5, max_count + 0.5]``, rounded.

    Returns int64 ``(C,)`` in ascending order, each in ``1..max_count``.
    """
    u = (np.arange(num_categories) + 0.5) / num_categories
    lo, hi = 0.5, max_count + 0.5
    e = 1.0 - tail_exponent
    if abs(e) < 1e-9:
        n = lo * (hi / lo) ** u
    else:
        n = (lo ** e + u * (hi ** e - lo ** e)) ** (1.0 / e)
    return np.clip(np.round(n), 1, max_count).astype(np.int64)


def val_counts(train_counts: np.ndarray, num_images: int, min_images: int,
               per_image: float) -> np.ndarray:
    """Val image count per category: ``min_images`` each plus a share ∝ the training count."""
    c = len(train_counts)
    if min_images > num_images:
        raise ValueError(f"min_val_images={min_images} exceeds val_images={num_images}")
    total = max(min_images * c, int(round(num_images * per_image)))
    share = (total - min_images * c) * train_counts / train_counts.sum()
    extra = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - extra), kind="stable")
    extra[order[: total - min_images * c - int(extra.sum())]] += 1
    return np.minimum(min_images + extra, num_images)


def assign(counts: np.ndarray, num_images: int, max_distinct: int, rng: np.random.Generator,
           split: str) -> list[list[int]]:
    """Put category ``k`` in ``counts[k]`` distinct images; each image gets 1..max_distinct."""
    total = int(counts.sum())
    if total < num_images:
        raise ValueError(
            f"{split}: the long tail gives {total} category-image pairs for {num_images} images "
            "(every image needs one); lower the image count or raise num_categories / "
            "max_image_count")
    if total > num_images * max_distinct:
        raise ValueError(
            f"{split}: {total} category-image pairs do not fit {num_images} images with at most "
            f"{max_distinct} categories each; raise the image count or lower num_categories")
    mean = total / num_images
    cap = np.clip(1 + rng.poisson(mean - 1, num_images), 1, max_distinct)
    while (diff := total - int(cap.sum())) != 0:
        room = np.nonzero(cap < max_distinct if diff > 0 else cap > 1)[0]
        pick = rng.choice(room, min(abs(diff), len(room)), replace=False)
        cap[pick] += 1 if diff > 0 else -1
    remaining = cap.astype(np.float64)
    images: list[list[int]] = [[] for _ in range(num_images)]
    for k in np.argsort(-counts, kind="stable"):
        n = int(counts[k])
        free = np.nonzero(remaining > 0)[0]
        keys = np.log(rng.random(len(free))) / remaining[free]  # Efraimidis-Spirakis
        chosen = free[np.argsort(-keys, kind="stable")[:n]]
        if len(chosen) < n:  # the capacity left sits in fewer than n images: add least-loaded
            load = np.array([len(i) for i in images], dtype=np.float64)
            load[chosen] = np.inf
            chosen = np.concatenate([chosen, np.argsort(load, kind="stable")[: n - len(chosen)]])
        remaining[chosen] -= 1
        for i in chosen:
            images[i].append(int(k))
    return images


def plan_split(image_categories: list[list[int]], first_image_id: int, num_categories: int,
               neighbours: list[np.ndarray], rng: np.random.Generator, *, max_objects: int,
               multi_instance_prob: float, not_exhaustive_fraction: float,
               neg_per_image: int) -> list[ImagePlan]:
    """Instances, drawing order, neg and not-exhaustive sets for each image of one split."""
    plans = []
    for i, cats in enumerate(image_categories):
        objects = [(k, True) for k in cats]
        for k in cats:
            if rng.random() < multi_instance_prob:
                extra = min(int(rng.integers(1, 3)), max_objects - len(objects))
                objects += [(k, True)] * max(extra, 0)
        not_exhaustive: tuple[int, ...] = ()
        if rng.random() < not_exhaustive_fraction and len(objects) < max_objects:
            k = int(cats[int(rng.integers(len(cats)))])
            objects.append((k, False))  # drawn, deliberately left unannotated
            not_exhaustive = (k,)
        order = rng.permutation(len(objects))
        present = set(cats)
        near = sorted({int(j) for k in cats for j in neighbours[k]} - present)
        neg = list(rng.permutation(near)[:neg_per_image]) if near else []
        if len(neg) < neg_per_image:
            rest = np.array(sorted(set(range(num_categories)) - present - set(neg)), dtype=np.int64)
            neg += list(rng.permutation(rest)[: neg_per_image - len(neg)])
        plans.append(ImagePlan(
            image_id=first_image_id + i,
            objects=tuple(objects[j] for j in order),
            neg_categories=tuple(sorted(int(k) for k in neg)),
            not_exhaustive=not_exhaustive,
        ))
    return plans
