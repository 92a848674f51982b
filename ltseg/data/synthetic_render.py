"""Draw one synthetic image from its plan: clutter, objects with occlusion, exact annotations.

Objects are painted back to front into an RGB canvas and an instance-label map; an object is
placed only where it leaves every earlier object at least ``min_visible`` of its pixels. The
annotation of an object is its *visible* part (label map), traced to exact polygons.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .synthetic_plan import COLOURS, Category, ImagePlan
from .synthetic_polygons import mask_to_polygons

BACKGROUND = -1
PLACEMENT_TRIES = 40
MIN_FRAGMENT_PIXELS = 4   # visible slivers smaller than this are not annotated
MIN_VISIBLE_PIXELS = 10   # an object showing less than this is not annotated at all
MIN_DIAMETER = 10.0       # pixels, whatever the image size
SECONDARY_SHADE = 0.35    # pattern colour = main colour x this


def _regular(n: int, inner: float | None = None, phase: float = -math.pi / 2) -> np.ndarray:
    """Regular n-gon (or 2n-point star with ``inner`` radius) on the unit circle, (P, 2)."""
    if inner is None:
        t = phase + 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(t), np.sin(t)], 1)
    t = phase + math.pi * np.arange(2 * n) / n
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], 1) / 17.0


_CIRCLE = _regular(64)
# Unit outlines (inside the unit disc) as (polygon, fill): fill 0 cuts a hole.
SHAPE_OUTLINES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_CIRCLE, 1)],
    "square": [(_regular(4, phase=math.pi / 4), 1)],
    "triangle": [(_regular(3), 1)],
    "pentagon": [(_regular(5), 1)],
    "hexagon": [(_regular(6), 1)],
    "star": [(_regular(5, inner=0.42), 1)],
    "ring": [(_CIRCLE, 1), (0.55 * _CIRCLE, 0)],
    "cross": [(np.array([[-.3, -.95], [.3, -.95], [.3, -.3], [.95, -.3], [.95, .3], [.3, .3],
                         [.3, .95], [-.3, .95], [-.3, .3], [-.95, .3], [-.95, -.3],
                         [-.3, -.3]]), 1)],
    "crescent": [(_CIRCLE, 1), (0.8 * _CIRCLE + [0.42, 0.0], 0)],
    "diamond": [(np.array([[0, -1.0], [0.58, 0], [0, 1.0], [-0.58, 0]]), 1)],
    "heart": [(_heart(), 1)],
    "arrow": [(np.array([[-.95, -.25], [.15, -.25], [.15, -.62], [.95, 0], [.15, .62],
                         [.15, .25], [-.95, .25]]), 1)],
}


@dataclass(frozen=True)
class RenderSettings:
    """Per-image drawing parameters (sizes in pixels unless noted)."""

    image_size: int
    object_size: tuple[float, float]   # diameter range, fraction of image_size
    min_visible: float                 # fraction of an object that must stay visible
    clutter: float                     # scales the number of lines and distractor blobs
    noise_std: float                   # per-pixel Gaussian noise, 0..255 scale
    color_jitter: float                # per-channel colour factor in [1 - j, 1 + j]


def _rasterise(outlines: list[tuple[np.ndarray, int]], radius: float, angle: float,
               aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Bool mask of a rotated, scaled outline cropped to its box, and its centre (x, y) in it."""
    half = int(math.ceil(radius * max(aspect, 1.0))) + 1
    img = Image.new("L", (2 * half, 2 * half), 0)
    draw = ImageDraw.Draw(img)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for outline, fill in outlines:
        pts = (outline * [aspect, 1.0]) @ rot.T * radius + half
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)
    mask = np.asarray(img) > 0
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    mask = mask[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    return mask, np.array([half - cols[0], half - rows[0]], dtype=np.float64)


def _pattern(pattern: str, shape: tuple[int, int], centre: np.ndarray, angle: float,
             period: float) -> np.ndarray:
    """Bool map of the secondary-colour pixels of a pattern in the object's own frame."""
    if pattern == "solid":
        return np.zeros(shape, dtype=bool)
    y, x = np.mgrid[: shape[0], : shape[1]] + 0.5
    x, y = x - centre[0], y - centre[1]
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    if pattern == "striped":
        return np.floor(u / (period / 2)) % 2 == 1
    if pattern == "checkered":
        return (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 1
    du, dv = u % period - period / 2, v % period - period / 2  # dotted
    return du * du + dv * dv < (0.3 * period) ** 2


def _blob_outline(rng: np.random.Generator) -> np.ndarray:
    """A smooth random non-category blob inside the unit disc, (40, 2)."""
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    amp = rng.uniform(0, 0.22, 3)
    r = 1.0 + sum(a * np.cos(k * t + rng.uniform(0, 2 * math.pi)) for a, k in zip(amp, (2, 3, 4)))
    return np.stack([np.cos(t), np.sin(t)], 1) * (r / (1.0 + amp.sum()))[:, None]


def _background(rng: np.random.Generator, s: RenderSettings) -> Image.Image:
    """Smooth low-saturation colour noise, lines and distractor blobs (under all objects)."""
    g = int(rng.integers(3, 7))
    field = rng.uniform(70, 190, (g, g, 3))
    field = 0.5 * field + 0.5 * field.mean(-1, keepdims=True)
    img = Image.fromarray(field.astype(np.uint8)).resize((s.image_size,) * 2, Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    size = s.image_size
    for _ in range(int(rng.poisson(3 * s.clutter))):
        p = rng.uniform(-0.2, 1.2, 4) * size
        draw.line(p.tolist(), fill=tuple(int(c) for c in rng.integers(30, 230, 3)),
                  width=int(rng.integers(1, 4)))
    lo, hi = s.object_size
    for _ in range(int(rng.poisson(2 * s.clutter))):
        radius = size * math.exp(rng.uniform(math.log(lo), math.log(hi))) / 2
        pts = _blob_outline(rng) * radius + rng.uniform(0, size, 2)
        draw.polygon([tuple(p) for p in pts.tolist()],
                     fill=tuple(int(c) for c in rng.integers(30, 230, 3)))
    return img


class _Canvas:
    """RGB canvas + instance-label map + per-object visible/full pixel counts."""

    def __init__(self, background: Image.Image, num_objects: int):
        self.rgb = np.asarray(background, dtype=np.float32).copy()
        self.labels = np.full(self.rgb.shape[:2], BACKGROUND, dtype=np.int16)
        self.full = np.zeros(num_objects, dtype=np.int64)
        self.visible = np.zeros(num_objects, dtype=np.int64)

    def worst_visibility(self, mask: np.ndarray, x0: int, y0: int) -> float:
        """Smallest visible fraction any drawn object would keep if ``mask`` went on top."""
        under = self.labels[y0: y0 + mask.shape[0], x0: x0 + mask.shape[1]][mask]
        lost = np.bincount(under[under >= 0], minlength=len(self.full))
        drawn = self.full > 0
        if not drawn.any():
            return 1.0
        return float(((self.visible - lost)[drawn] / self.full[drawn]).min())

    def paint(self, mask: np.ndarray, x0: int, y0: int, colour: np.ndarray, label: int) -> None:
        """Put ``colour`` ((h, w, 3) or (3,)) on ``mask`` at (x0, y0); ``label`` -1 = distractor."""
        region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        under = self.labels[region][mask]
        self.visible -= np.bincount(under[under >= 0], minlength=len(self.full))
        rgb = self.rgb[region]
        rgb[mask] = colour[mask] if np.ndim(colour) == 3 else colour
        self.labels[region][mask] = label
        if label >= 0:
            self.full[label] = self.visible[label] = int(mask.sum())


def _place(canvas: _Canvas, rng: np.random.Generator, s: RenderSettings, outlines,
           scale_range: tuple[float, float], min_visible: float):
    """Try random sizes/poses/positions; return the first acceptable one (or the best seen)."""
    size = s.image_size
    best, best_score = None, -1.0
    for attempt in range(PLACEMENT_TRIES):
        shrink = 0.85 ** (attempt // 10)
        lo, hi = scale_range
        log_d = rng.uniform(math.log(lo), math.log(hi))
        diameter = max(MIN_DIAMETER, size * shrink * math.exp(log_d))
        angle = rng.uniform(0, 2 * math.pi)
        aspect = rng.uniform(0.85, 1.15)
        mask, centre = _rasterise(outlines, diameter / 2, angle, aspect)
        h, w = mask.shape
        if h > size or w > size:
            continue
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        score = canvas.worst_visibility(mask, x0, y0)
        if score > best_score:
            best, best_score = (mask, centre, angle, diameter, x0, y0), score
        if score >= min_visible:
            break
    return best


def render_image(plan: ImagePlan, categories: list[Category], s: RenderSettings,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Image ``(S, S, 3) uint8`` and annotations ``{category, segmentation, area, bbox}``.

    ``category`` is the index into ``categories``; unannotated objects (not-exhaustive) and
    objects hidden below ``MIN_VISIBLE_PIXELS`` are drawn but get no annotation.
    """
    canvas = _Canvas(_background(rng, s), len(plan.objects))
    boxes = []
    for label, (k, _) in enumerate(plan.objects):
        cat = categories[k]
        mask, centre, angle, diameter, x0, y0 = _place(
            canvas, rng, s, SHAPE_OUTLINES[cat.shape], s.object_size, s.min_visible)
        base = np.asarray(COLOURS[cat.colour], dtype=np.float32)
        main = base * rng.uniform(1 - s.color_jitter, 1 + s.color_jitter, 3).astype(np.float32)
        secondary = _pattern(cat.pattern, mask.shape, centre, angle, max(4.0, diameter / 4.5))
        colour = np.where(secondary[..., None], main * SECONDARY_SHADE, main)
        canvas.paint(mask, x0, y0, colour, label)
        boxes.append((x0, y0, mask.shape[1], mask.shape[0]))
    lo, hi = s.object_size
    for _ in range(int(rng.poisson(0.5 * s.clutter))):  # distractors on top: more occlusion
        outline = [(_blob_outline(rng), 1)]
        mask, _, _, _, x0, y0 = _place(canvas, rng, s, outline, (lo, (lo * hi) ** 0.5),
                                       s.min_visible)
        if canvas.worst_visibility(mask, x0, y0) >= s.min_visible:
            canvas.paint(mask, x0, y0, rng.integers(30, 230, 3).astype(np.float32), BACKGROUND)
    rgb = canvas.rgb
    if s.noise_std > 0:
        rgb = rgb + rng.normal(0.0, s.noise_std, rgb.shape).astype(np.float32)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    annotations = []
    for label, (k, annotated) in enumerate(plan.objects):
        if not annotated:
            continue
        x0, y0, w, h = boxes[label]
        visible = canvas.labels[y0: y0 + h, x0: x0 + w] == label
        parts, n = ndimage.label(visible)
        if n > 1:
            sizes = np.bincount(parts.ravel())
            visible &= (sizes >= MIN_FRAGMENT_PIXELS)[parts]
        area = int(visible.sum())
        rows, cols = np.nonzero(visible.any(1))[0], np.nonzero(visible.any(0))[0]
        if area < MIN_VISIBLE_PIXELS or rows[-1] - rows[0] < 2 or cols[-1] - cols[0] < 2:
            continue
        annotations.append({
            "category": int(k),
            "segmentation": mask_to_polygons(visible, (x0, y0)),
            "area": area,
            "bbox": [x0 + int(cols[0]), y0 + int(rows[0]),
                     int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
        })
    return image, annotations
