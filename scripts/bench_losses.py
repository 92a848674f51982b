"""Forward+backward time of every classification loss vs plain sigmoid BCE, in one run.

    python scripts/bench_losses.py [--rois 8192] [--classes 1203] [--repeats 7] [--device cpu|cuda]
                                   [--out docs/benchmarks_losses.md]

LVIS-v1-like statistics (337 rare / 461 common / 405 frequent classes), 25 % foreground RoIs.
Losses are timed round-robin (one repeat of each in turn) and the median is reported as a
ratio to BCE. On CUDA every loss's full forward (input checks included) and backward also runs
once under ``torch.cuda.set_sync_debug_mode("error")``: a host synchronisation in a loss fails the run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ltseg.data.category_stats import CategoryStats
from ltseg.losses import LOSSES, LossContext


def lvis_like_stats(num_classes: int, gen: torch.Generator) -> CategoryStats:
    """Image counts with LVIS v1's r/c/f proportions; instances 1-3x the images."""
    groups = torch.multinomial(torch.tensor([337.0, 461.0, 405.0]), num_classes, replacement=True, generator=gen)
    low = torch.tensor([1, 11, 101])[groups]
    high = torch.tensor([11, 101, 5000])[groups]
    images = low + (torch.rand(num_classes, generator=gen) * (high - low)).long()
    instances = images * (1 + torch.randint(0, 3, (num_classes,), generator=gen))
    return CategoryStats.from_counts(images, instances, num_images=100_000)


def time_once(loss, z, ctx, device) -> float:
    z.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss(z, ctx).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=8192)
    ap.add_argument("--classes", type=int, default=1203)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="docs/benchmarks_losses.md")
    args = ap.parse_args()
    device = torch.device(args.device)
    load_start = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(0)
    stats = lvis_like_stats(args.classes, gen)
    r, c = args.rois, args.classes
    labels = torch.where(torch.rand(r, generator=gen) < 0.25, torch.randint(0, c, (r,), generator=gen), c).to(device)
    dev_gen = torch.Generator(device=device).manual_seed(0)
    names = ["bce"] + sorted(n for n in LOSSES if n != "bce")
    losses = {n: LOSSES[n]().to(device) for n in names}
    inputs = {n: torch.randn(r, losses[n].num_logits(c), generator=gen).to(device).requires_grad_() for n in names}
    ctx = LossContext(labels, stats, generator=dev_gen)
    for n in names:  # warm-up (caches, allocator, kernels); on CUDA: no host sync in forward+backward
        losses[n](inputs[n], ctx).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                losses[n](inputs[n], ctx).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    times = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            times[n].append(time_once(losses[n], inputs[n], ctx, device))
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    threads = torch.get_num_threads()
    cpu = f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    lines = [
        "# Classification-loss speed",
        "",
        f"Forward+backward of each loss on {r} RoIs x {c} classes (25 % foreground), median of "
        f"{args.repeats} round-robin repeats, {where}, torch {torch.__version__}. "
        "Command: `python scripts/bench_losses.py" + (f" --device {args.device}`." if args.device != "cpu" else "`."),
        "Goal: every loss <= 1.5x BCE. `min` columns: fastest repeat (less sensitive to other load; "
        f"1-min load average at the start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}).",
        "",
        "| loss | median ms | x BCE (median) | min ms | x BCE (min) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {1000 * med[n]:.1f} | {med[n] / med['bce']:.2f} | {1000 * best[n]:.1f} | {best[n] / best['bce']:.2f} |"
        for n in names
    ]
    if device.type == "cuda":
        lines += ["", "Host-sync check: every loss's forward (input checks included) and backward ran under "
                  "`torch.cuda.set_sync_debug_mode(\"error\")` without error."]
    else:
        lines += ["", "Host-sync check: not run (needs CUDA: `--device cuda`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
