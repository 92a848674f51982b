"""The built-in long-tail dataset "lvis-synth": LVIS v1-format JSON + PNG images, generated.

Categories are shape x colour x pattern combinations (``red_striped_star``); training image
counts follow a power law with LVIS's rare/common/frequent proportions; images carry clutter,
occlusion, multi-instance categories and federated ``neg`` / ``not_exhaustive`` labels.
See docs/dataset_synthetic.md. Usage::

    python -m ltseg.data.synthetic --out DIR [--num-categories N --train-images N ...]
    ensure_synthetic(root, **params)  # generate on first use, return the file paths
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from .category_stats import frequency_group
from .synthetic_plan import (ImagePlan, assign, choose_categories, confusable, plan_split,
                             power_law_counts, val_counts)
from .synthetic_render import RenderSettings, render_image

FORMAT_VERSION = 2          # bump when the output for the same parameters changes
MAX_HEAD_IMAGE_COUNT = 400  # default n_max: min(this, train_images // 3)
SPLIT_CODES = {"train": 1, "val": 2}
VAL_IMAGE_ID_OFFSET = 1_000_000


@dataclass(frozen=True)
class SyntheticParams:
    """Every knob of the generator; all are keywords of ``ensure_synthetic`` (see docs)."""

    num_categories: int = 60
    train_images: int = 1500
    val_images: int = 240
    image_size: int = 256
    tail_exponent: float = 0.8
    max_image_count: int | None = None      # None: min(400, train_images // 3)
    min_val_images: int = 5
    object_size: tuple[float, float] = (0.09, 0.43)   # diameter, fraction of image_size
    max_objects: int = 8
    multi_instance_prob: float = 0.2
    min_visible: float = 0.5
    not_exhaustive_fraction: float = 0.1
    neg_per_image: int = 3
    clutter: float = 1.0
    noise_std: float = 0.0
    color_jitter: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # canonical types: the digest must not see 1 vs 1.0
            value = getattr(self, f.name)
            if f.type == "float":
                object.__setattr__(self, f.name, float(value))
            elif f.type == "int" or (f.type == "int | None" and value is not None):
                object.__setattr__(self, f.name, int(value))
        object.__setattr__(self, "object_size", tuple(float(v) for v in self.object_size))
        checks = {
            "num_categories": 1 <= self.num_categories,
            "train_images": 1 <= self.train_images,
            "val_images": 1 <= self.val_images,
            "image_size": 32 <= self.image_size,
            "tail_exponent": 0.0 <= self.tail_exponent < 5.0,
            "max_image_count": self.max_image_count is None
            or 1 <= self.max_image_count <= self.train_images,
            "min_val_images": 1 <= self.min_val_images <= self.val_images,
            "object_size": len(self.object_size) == 2
            and 0.0 < self.object_size[0] <= self.object_size[1] <= 0.8,
            "max_objects": 2 <= self.max_objects,
            "multi_instance_prob": 0.0 <= self.multi_instance_prob <= 1.0,
            "min_visible": 0.0 < self.min_visible <= 1.0,
            "not_exhaustive_fraction": 0.0 <= self.not_exhaustive_fraction <= 1.0,
            "neg_per_image": 0 <= self.neg_per_image,
            "clutter": 0.0 <= self.clutter,
            "noise_std": 0.0 <= self.noise_std,
            "color_jitter": 0.0 <= self.color_jitter < 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("synthetic dataset: invalid value for "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @classmethod
    def from_kwargs(cls, **params) -> "SyntheticParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"synthetic dataset: unknown parameter(s) {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**params)

    @property
    def head_image_count(self) -> int:
        if self.max_image_count is not None:
            return self.max_image_count
        return max(1, min(MAX_HEAD_IMAGE_COUNT, self.train_images // 3))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["object_size"] = list(self.object_size)
        return d

    def digest(self) -> str:
        text = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


PRESETS = {
    "default": SyntheticParams(),
    "full": SyntheticParams(num_categories=300, train_images=8000, val_images=1500,
                            image_size=384, max_image_count=400, object_size=(0.05, 0.35),
                            max_objects=10, clutter=1.5),
}


# ---------------------------------------------------------------------------- planning
def make_plan(p: SyntheticParams) -> dict:
    """Categories, per-category train counts and the per-image plans of both splits."""
    rng = np.random.default_rng([p.seed, 0])
    categories = choose_categories(p.num_categories, rng)
    counts = power_law_counts(p.num_categories, p.tail_exponent, p.head_image_count)
    train_counts = counts[rng.permutation(p.num_categories)]
    neighbours = confusable(categories)
    max_distinct = max(1, p.max_objects - 2)
    per_image = train_counts.sum() / p.train_images
    common = dict(max_objects=p.max_objects, multi_instance_prob=p.multi_instance_prob,
                  not_exhaustive_fraction=p.not_exhaustive_fraction,
                  neg_per_image=p.neg_per_image)
    train = plan_split(assign(train_counts, p.train_images, max_distinct, rng, "train"),
                       1, p.num_categories, neighbours, rng, **common)
    v_counts = val_counts(train_counts, p.val_images, p.min_val_images, per_image)
    val = plan_split(assign(v_counts, p.val_images, max_distinct, rng, "val"),
                     VAL_IMAGE_ID_OFFSET + 1, p.num_categories, neighbours, rng, **common)
    return {"categories": categories, "train": train, "val": val}


# ---------------------------------------------------------------------------- rendering
def _settings(p: SyntheticParams) -> RenderSettings:
    return RenderSettings(p.image_size, p.object_size, p.min_visible, p.clutter, p.noise_std,
                          p.color_jitter)


def _render_one(job: tuple) -> list[dict]:
    """Worker: draw one image, write its PNG, return its annotations (category indices)."""
    plan, split, index, categories, params, image_dir = job
    rng = np.random.default_rng([params.seed, SPLIT_CODES[split], index])
    image, anns = render_image(plan, categories, _settings(params), rng)
    (Path(image_dir) / _file_name(plan.image_id)).write_bytes(encode_png(image))
    return anns


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, 3) uint8`` -> PNG bytes (filter "Up", zlib level 1): fast and deterministic."""
    h, w, _ = image.shape
    rows = image.reshape(h, w * 3)
    up = np.empty((h, w * 3 + 1), dtype=np.uint8)
    up[:, 0] = 2  # PNG filter type "Up": each byte minus the byte above
    up[0, 1:] = rows[0]
    up[1:, 1:] = rows[1:] - rows[:-1]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(up.tobytes(), 1)) + chunk(b"IEND", b""))


def _file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def _render_split(plans: list[ImagePlan], split: str, categories, p: SyntheticParams,
                  image_dir: Path, pool, progress: bool) -> list[list[dict]]:
    jobs = [(plan, split, i, categories, p, str(image_dir)) for i, plan in enumerate(plans)]
    results = (map(_render_one, jobs) if pool is None else
               pool.imap(_render_one, jobs, chunksize=max(1, min(16, len(jobs) // 64 + 1))))
    return list(tqdm(results, total=len(jobs), desc=f"lvis-synth {split}", unit="img",
                     disable=not progress, file=sys.stderr))


def _lvis_dict(split: str, plans: list[ImagePlan], per_image: list[list[dict]],
               p: SyntheticParams) -> dict:
    images, annotations = [], []
    for plan, anns in zip(plans, per_image):
        present = {a["category"] for a in anns}
        images.append({
            "id": plan.image_id,
            "file_name": _file_name(plan.image_id),
            "height": p.image_size,
            "width": p.image_size,
            "neg_category_ids": [k + 1 for k in plan.neg_categories],
            "not_exhaustive_category_ids": [k + 1 for k in plan.not_exhaustive if k in present],
        })
        for a in anns:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": plan.image_id,
                "category_id": a["category"] + 1,
                "segmentation": a["segmentation"],
                "area": a["area"],
                "bbox": a["bbox"],
                "iscrowd": 0,
            })
    return {
        "info": {"description": f"lvis-synth {split} split (ltseg built-in long-tail dataset)",
                 "version": FORMAT_VERSION, "params": p.to_dict()},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [],  # filled from the training split by category_fields
    }


def category_fields(categories, train_annotations: list[dict]) -> list[dict]:
    """LVIS category entries with image_count / instance_count / frequency from train."""
    n = len(categories)
    instances = np.zeros(n, dtype=np.int64)
    image_sets: list[set] = [set() for _ in range(n)]
    for a in train_annotations:
        instances[a["category_id"] - 1] += 1
        image_sets[a["category_id"] - 1].add(a["image_id"])
    return [{
        "id": k + 1,
        "name": c.name,
        "synonyms": [c.name],
        "def": c.definition,
        "synset": f"{c.name}.n.01",
        "frequency": frequency_group(len(image_sets[k])),
        "image_count": len(image_sets[k]),
        "instance_count": int(instances[k]),
    } for k, c in enumerate(categories)]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))


def generate(out_dir: str | Path, params: SyntheticParams, workers: int = 0,
             progress: bool = False) -> dict:
    """Write train.json, val.json, images/{train,val}/*.png and params.json into ``out_dir``.

    ``workers``: processes for drawing (0 = all CPUs, 1 = in this process); the output does
    not depend on it. ``progress``: a progress bar on stderr. Returns summary statistics.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    plan = make_plan(params)
    categories = plan["categories"]
    workers = workers or os.cpu_count() or 1
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool_ctx = mp.get_context(method).Pool(workers) if workers > 1 else contextlib.nullcontext()
    rendered = {}
    with pool_ctx as pool:
        for split in ("train", "val"):
            image_dir = out / "images" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            rendered[split] = _render_split(plan[split], split, categories, params, image_dir,
                                            pool, progress)
    data = {s: _lvis_dict(s, plan[s], rendered[s], params) for s in rendered}
    fields = category_fields(categories, data["train"]["annotations"])
    for split, d in data.items():
        d["categories"] = fields
        _check_split(split, d, params)
        _write_json(out / f"{split}.json", d)
    stats = summarize(data, time.perf_counter() - start)
    (out / "params.json").write_text(json.dumps(
        {"digest": params.digest(), "format": FORMAT_VERSION, "params": params.to_dict()},
        indent=1, sort_keys=True))
    return stats


def _check_split(split: str, d: dict, p: SyntheticParams) -> None:
    """Guarantees the plan makes; a violation means the parameters are too crowded."""
    per_cat: dict[int, set] = {}
    for a in d["annotations"]:
        per_cat.setdefault(a["category_id"], set()).add(a["image_id"])
    need = 1 if split == "train" else p.min_val_images
    short = [c["id"] for c in d["categories"] if len(per_cat.get(c["id"], ())) < need]
    if short:
        raise RuntimeError(f"synthetic {split}: categories {short[:10]} are in fewer than {need} "
                           "images after occlusion; lower max_objects or object_size")


def summarize(data: dict, seconds: float) -> dict:
    cats = data["train"]["categories"]
    groups = {g: sum(c["frequency"] == g for c in cats) for g in "rcf"}
    return {
        "seconds": round(seconds, 2),
        "categories": len(cats),
        "groups": groups,
        "group_fractions": {g: round(n / len(cats), 3) for g, n in groups.items()},
        "train_images": len(data["train"]["images"]),
        "train_instances": len(data["train"]["annotations"]),
        "val_images": len(data["val"]["images"]),
        "val_instances": len(data["val"]["annotations"]),
        "max_image_count": max(c["image_count"] for c in cats),
        "min_image_count": min(c["image_count"] for c in cats),
        "multi_instance_categories": sum(c["instance_count"] > c["image_count"] for c in cats),
    }


# ---------------------------------------------------------------------------- cache
@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive inter-process lock on ``path`` (POSIX flock; atomic rename is the fallback)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _paths(root: Path) -> dict:
    return {s: {"ann_file": str(root / f"{s}.json"), "image_root": str(root / "images" / s)}
            for s in ("train", "val")}


def _stored_digest(root: Path) -> str | None:
    try:
        return json.loads((root / "params.json").read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_synthetic(root: str, workers: int = 0, verbose: bool = True, **params) -> dict:
    """Generate the dataset into ``root`` unless it already holds these exact parameters.

    Generation goes to a temporary sibling folder that is renamed into place, under a lock,
    so concurrent callers (DDP ranks) generate once and never see a partial dataset. A
    ``root`` holding other parameters is regenerated; a non-empty folder that is not a
    synthetic dataset is refused. Returns ``{"train"|"val": {"ann_file", "image_root"}}``.
    """
    p = SyntheticParams.from_kwargs(**params)
    root = Path(root)
    digest = p.digest()
    if _stored_digest(root) == digest:
        return _paths(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if _stored_digest(root) == digest:
            return _paths(root)
        if (root.exists() and (not root.is_dir() or any(root.iterdir()))
                and _stored_digest(root) is None):
            raise FileExistsError(f"{root}: exists and is not a synthetic dataset folder "
                                  "(no params.json); choose another data.generator.root")
        for kind in ("tmp", "old"):  # left by killed runs; we hold the lock
            for stale in root.parent.glob(f".{root.name}.{kind}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        owner = f"{socket.gethostname()}-{os.getpid()}"
        tmp = root.parent / f".{root.name}.tmp-{owner}"
        if verbose:
            print(f"[ltseg] generating the synthetic dataset into {root} ...", file=sys.stderr)
        stats = generate(tmp, p, workers, progress=verbose)
        if root.exists():
            old = root.parent / f".{root.name}.old-{owner}"
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old)
        else:
            os.rename(tmp, root)
        if verbose:
            print(f"[ltseg] synthetic dataset ready: {json.dumps(stats)}", file=sys.stderr)
    return _paths(root)


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ltseg.data.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = all CPUs)")
    for f in dataclasses.fields(SyntheticParams):
        if f.name != "object_size":
            kind = float if f.type in ("float", float) else int
            ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    ap.add_argument("--object-size", type=float, nargs=2, default=None, metavar=("MIN", "MAX"))
    args = ap.parse_args(argv)
    params = PRESETS[args.preset].to_dict()
    params.update({k: v for k, v in vars(args).items()
                   if k in params and v is not None})
    start = time.perf_counter()
    paths = ensure_synthetic(args.out, workers=args.workers, **params)
    with open(paths["train"]["ann_file"]) as f:
        train = json.load(f)
    with open(paths["val"]["ann_file"]) as f:
        val = json.load(f)
    stats = summarize({"train": train, "val": val}, time.perf_counter() - start)
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
