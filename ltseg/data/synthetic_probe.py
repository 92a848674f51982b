"""Learnability probe for a generated dataset: classify ground-truth crops, accuracy per group.

A minutes-long proxy for tuning the synthetic dataset's difficulty before a detector run: a
small CNN is trained from scratch with softmax CE on the training annotations' box crops
(resized to ``crop x crop``, context margin included) and evaluated on val crops. It reports
top-1 accuracy over val instances and mean per-class accuracy for the rare / common / frequent
groups (the long-tail gap as seen by a classifier, without localisation)::

    python -m ltseg.data.synthetic_probe --root .cache/ltseg/synthetic/<folder> [--epochs 4]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .category_stats import GROUPS, CategoryStats

CONTEXT = 0.15  # crop margin, fraction of the box side


def load_crops(ann_file: str | Path, image_root: str | Path, stats: CategoryStats,
               crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, crop, crop)`` uint8 box crops and ``(N,)`` contiguous labels of a split."""
    data = json.loads(Path(ann_file).read_text())
    files = {img["id"]: img["file_name"] for img in data["images"]}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    crops, labels = [], []
    for image_id, anns in sorted(by_image.items()):
        image = Image.open(Path(image_root) / files[image_id]).convert("RGB")
        for a in anns:
            x, y, w, h = a["bbox"]
            side = max(w, h) * (1 + 2 * CONTEXT)
            cx, cy = x + w / 2, y + h / 2
            box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2,
                                           cy + side / 2))  # black outside the image
            crops.append(np.asarray(image.crop(box).resize((crop, crop), Image.BILINEAR)))
            labels.append(stats.index_of(a["category_id"]))
    return (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(labels, dtype=torch.int64))


def _classifier(num_classes: int) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 96), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(96, num_classes))


def probe(root: str | Path, epochs: int = 4, crop: int = 32, batch_size: int = 128,
          seed: int = 0) -> dict:
    """Train on train crops, evaluate on val crops; returns accuracies (fractions)."""
    root = Path(root)
    stats = CategoryStats.from_json(root / "train.json")
    x_train, y_train = load_crops(root / "train.json", root / "images" / "train", stats, crop)
    x_val, y_val = load_crops(root / "val.json", root / "images" / "val", stats, crop)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _classifier(stats.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(y_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(_normalise(x_train[idx])), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_normalise(x)).argmax(1) for x in x_val.split(512)])
    correct = (pred == y_val).double()
    per_class = torch.zeros(stats.num_classes, dtype=torch.float64).index_add_(0, y_val, correct)
    per_class /= torch.bincount(y_val, minlength=stats.num_classes).clamp(min=1)
    groups = stats.group_index
    out = {"train_crops": len(y_train), "val_crops": len(y_val), "epochs": epochs,
           "accuracy": round(correct.mean().item(), 4)}
    for g, name in enumerate(GROUPS):
        out[f"class_accuracy_{name}"] = round(per_class[groups == g].mean().item(), 4) \
            if (groups == g).any() else None
    return out


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - 128.0) / 64.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ltseg.data.synthetic_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a generated dataset folder")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    result = probe(args.root, args.epochs, args.crop, seed=args.seed)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
