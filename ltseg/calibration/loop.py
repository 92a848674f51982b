"""The calibration loop (bi-level batches -> SGD on the calibrated heads) and the side-by-side evaluation."""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch
from torch import nn

from ltseg.data.build import build_test_loader
from ltseg.data.collate import collate
from ltseg.data.lvis import sample_seed
from ltseg.evaluation import evaluate_results, format_table
from ltseg.modeling.postprocess import to_lvis_results

from .bilevel import BilevelSampler
from .simcal import VARIANTS, SimCal, lr_factor

log = logging.getLogger(__name__)

TABLE_KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4")


def freeze(model: nn.Module) -> None:
    """Evaluation mode and no gradients for every parameter of the trained model."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def train_heads(simcal: SimCal, model: nn.Module, dataset, cfg, device: torch.device,
                generator: torch.Generator, seed: int, size_divisibility: int = 32, num_workers: int = 0) -> dict:
    """Train ``simcal``'s heads for ``cfg.epochs x cfg.steps_per_epoch`` bi-level steps.

    ``cfg`` is the ``calibration`` config. All steps' class/image draws are made first (from
    ``generator``); images are loaded by ``num_workers`` processes through the dataset's
    training transform with per-image seeds, so the run does not depend on the worker count.
    Returns counters (steps, steps without foreground, final loss, time).
    """
    sampler = BilevelSampler.from_dataset(dataset, classes_per_step=int(cfg.classes_per_step),
                                          images_per_class=int(cfg.images_per_class), generator=generator)
    params = [p for p in simcal.parameters() if p.requires_grad]
    o = cfg.optimizer
    optimizer = torch.optim.SGD(params, lr=float(o.lr), momentum=float(o.momentum), weight_decay=float(o.weight_decay))
    steps, period = int(cfg.epochs) * int(cfg.steps_per_epoch), max(int(cfg.log_period), 1)
    draws = [sampler.sample() for _ in range(steps)]
    keys = [[(i, sample_seed(seed, step, j)) for j, i in enumerate(d.image_indices.tolist())]
            for step, d in enumerate(draws)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, num_workers=num_workers,
                                         collate_fn=functools.partial(collate, size_divisibility=size_divisibility))
    simcal.train()
    empty, last, t0 = 0, float("nan"), time.perf_counter()
    for step, (draw, batch) in enumerate(zip(draws, loader)):
        epoch = step // int(cfg.steps_per_epoch) + 1
        for group in optimizer.param_groups:
            group["lr"] = float(o.lr) * lr_factor(epoch, cfg.lr_decay_epochs, float(cfg.gamma))
        batch = batch.to(device)
        loss, info = simcal.loss(model, batch.images, batch.image_sizes, batch.targets,
                                 draw.image_classes.to(device), generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"calibration step {step}: non-finite loss {float(loss)}")
        if sum(info.values()) == 0:
            empty += 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
        if (step + 1) % period == 0 or step + 1 == steps:
            log.info("calibration step %d/%d epoch %d lr %.2e loss %.4f %s", step + 1, steps, epoch,
                     optimizer.param_groups[0]["lr"], last, " ".join(f"{k}={v}" for k, v in info.items()))
    simcal.eval()
    if empty:
        log.warning("%d of %d calibration steps had no foreground proposal of a sampled class (zero loss)",
                    empty, steps)
    return {"steps": steps, "empty_steps": empty, "final_loss": last, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict_variants(simcal: SimCal, model: nn.Module, dataset, device: torch.device, images_per_batch: int = 1,
                     num_workers: int = 0) -> dict[str, list[dict]]:
    """LVIS results of the original, calibrated and dual-head predictions over ``dataset``."""
    loader = build_test_loader(dataset, images_per_batch, num_workers)
    results = {v: [] for v in VARIANTS}
    for batch in loader:
        batch = batch.to(device)
        out = simcal.predict(model, batch.images, batch.image_sizes, batch.orig_sizes)
        for v in VARIANTS:
            results[v].extend(to_lvis_results(out[v], batch.image_ids, dataset.category_ids))
    return results


def evaluate_variants(results: dict[str, list[dict]], gt, stats, bins="lvis", iou_types=("bbox", "segm"),
                      output_dir: Path | None = None, backend: str = "native") -> dict[str, dict[str, dict[str, float]]]:
    """``{iou_type: {variant: summary}}`` through ``evaluate_results``; with ``output_dir`` each
    variant's ``metrics.json`` and per-category CSVs go to ``output_dir/<variant>/``."""
    metrics: dict[str, dict[str, dict[str, float]]] = {t: {} for t in iou_types}
    for v, r in results.items():
        out = None if output_dir is None else Path(output_dir) / v
        m = evaluate_results(gt, r, iou_types=tuple(iou_types), train_stats=stats, bins=bins, output_dir=out,
                             backend=backend, plots=False)
        log.info("%s:\n%s", v, format_table(m))
        for t in iou_types:
            metrics[t][v] = m[t]
    return metrics


def format_side_by_side(metrics: dict[str, dict[str, dict[str, float]]], keys=TABLE_KEYS) -> str:
    """Text table, one block per IoU type: metric rows, variant columns (AP in %, -1 as ``-``)."""
    lines = []
    for iou_type, by_variant in metrics.items():
        variants = list(by_variant)
        lines.append(f"{iou_type:<8}" + "".join(f"{v:>8}" for v in variants))
        for key in keys:
            cells = []
            for v in variants:
                x = by_variant[v].get(key, -1.0)
                cells.append(f"{'-':>8}" if x < 0 else f"{100 * x:>8.2f}")
            lines.append(f"{key:<8}" + "".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
