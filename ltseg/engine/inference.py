"""Sharded inference: each rank streams its LVIS results to its own JSON shard on disk; rank 0
concatenates the shards file by file (no rank ever holds every mask in memory).

``run_inference`` is the building block of evaluation during and after training;
``predict_checkpoint`` rebuilds a trained model from a checkpoint (and the config stored beside
it) and predicts the val split, for ``python -m ltseg.evaluate checkpoint=...``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ltseg.engine import distributed as du
from ltseg.engine.logging import get_logger
from ltseg.modeling.postprocess import to_lvis_results

SHARD_PATTERN = "results_rank{rank:03d}.json"


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader,
    out_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    category_ids: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> list[Path]:
    """Predict this rank's shard of ``loader`` and write ``out_dir/results_rank<r>.json``.

    Args:
        model: unwrapped model; put in eval mode here and restored to its previous mode.
        loader: this rank's test loader of ``Batch`` (``build_test_loader``).
        category_ids: dataset id of each contiguous class (default ``loader.dataset.category_ids``).
        amp_dtype: autocast dtype for the forward pass, or None for fp32.
    Returns:
        every rank's shard path, in rank order, once all ranks have written theirs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if category_ids is None:
        category_ids = loader.dataset.category_ids
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    shard = out_dir / SHARD_PATTERN.format(rank=rank)
    tmp = shard.with_name(shard.name + ".tmp")
    t0, images, count = time.perf_counter(), 0, 0
    try:
        with open(tmp, "w") as f:
            f.write("[")
            for batch in loader:
                batch = batch.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(batch.images, batch.image_sizes, orig_sizes=batch.orig_sizes)
                for result in to_lvis_results(outputs, batch.image_ids, category_ids):
                    f.write(("," if count else "") + json.dumps(result))
                    count += 1
                images += len(batch)
            f.write("]")
        tmp.replace(shard)
    finally:
        model.train(was_training)
    get_logger().info(f"rank {rank}: {images} images -> {count} detections in {shard.name} "
                      f"({images / max(time.perf_counter() - t0, 1e-9):.1f} img/s)")
    du.barrier()
    return [out_dir / SHARD_PATTERN.format(rank=r) for r in range(world_size)]


@torch.no_grad()
def draw_predictions(model: nn.Module, dataset, indices: Sequence[int], score_thresh: float = 0.3,
                     max_boxes: int = 20, size_divisibility: int = 32) -> torch.Tensor:
    """Predictions drawn on val images for TensorBoard: ``(N, 3, H, W)`` uint8, zero-padded to the
    largest image; at most ``max_boxes`` boxes with score >= ``score_thresh``, named by class."""
    from torchvision.utils import draw_bounding_boxes

    from ltseg.data.collate import collate

    if not len(indices):
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        batch = collate([dataset[i] for i in indices], size_divisibility).to(device)
        outputs = model(batch.images, batch.image_sizes, orig_sizes=batch.orig_sizes)
    finally:
        model.train(was_training)
    names = dataset.stats.names
    drawn = []
    for i, out in zip(indices, outputs):
        keep = (out["scores"] >= score_thresh).nonzero().flatten()[:max_boxes].cpu()
        labels = [f"{names[int(c)]} {float(sc):.2f}" for c, sc in zip(out["labels"][keep], out["scores"][keep])]
        image = dataset.load_image(i)
        drawn.append(draw_bounding_boxes(image, out["boxes"][keep].cpu(), labels, width=2) if len(keep) else image)
    h, w = max(d.shape[1] for d in drawn), max(d.shape[2] for d in drawn)
    canvas = torch.zeros(len(drawn), 3, h, w, dtype=torch.uint8)
    for k, d in enumerate(drawn):
        canvas[k, :, : d.shape[1], : d.shape[2]] = d
    return canvas


def merge_shards(shards: Sequence[str | Path], path: str | Path) -> Path:
    """Concatenate JSON-list shards into one results file, one shard in memory at a time."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    first = True
    with open(tmp, "w") as out:
        out.write("[")
        for shard in shards:
            body = Path(shard).read_text().strip()
            if not (body.startswith("[") and body.endswith("]")):
                raise ValueError(f"results shard {shard} is not a JSON list")
            body = body[1:-1].strip()
            if body:
                out.write(("" if first else ",") + body)
                first = False
        out.write("]")
    tmp.replace(path)
    return path


def load_run_config(checkpoint: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config of the run that wrote ``checkpoint`` (``config.yaml`` beside it, else
    the copy inside), with dotlist ``overrides`` (``key=value``) applied."""
    checkpoint = Path(checkpoint)
    beside = checkpoint.parent / "config.yaml"
    if beside.is_file():
        cfg = OmegaConf.load(beside)
    else:
        from ltseg.engine.checkpoint import load_checkpoint

        text = load_checkpoint(checkpoint).get("config_yaml")
        if not text:
            raise FileNotFoundError(f"no config.yaml beside {checkpoint} and none stored inside it")
        cfg = OmegaConf.create(text)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def predict_checkpoint(checkpoint: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Rebuild the model of ``checkpoint``, predict the val split (sharded when launched with
    torchrun) and return the merged results JSON path (``<ckpt dir>/inference_<ckpt name>/results.json``)."""
    from hydra.utils import instantiate

    from ltseg.data.build import build_dataset, build_test_loader
    from ltseg.data.category_stats import CategoryStats
    from ltseg.engine.checkpoint import check_compatible, load_checkpoint
    from ltseg.modeling import build_model

    checkpoint = Path(checkpoint)
    cfg = load_run_config(checkpoint, overrides)
    ckpt = load_checkpoint(checkpoint)
    info = du.init_distributed(str(cfg.get("device", "auto")), float(cfg.trainer.collective_timeout_s))
    stats = CategoryStats.from_dict(ckpt["stats"]) if "stats" in ckpt else None
    if info.is_main:
        dataset = build_dataset(cfg.data, "val", stats)
    du.barrier()
    if not info.is_main:
        dataset = build_dataset(cfg.data, "val", stats)
    model = build_model(cfg.model, instantiate(cfg.loss), dataset.stats)
    check_compatible(model, ckpt["model"], str(checkpoint))
    model.load_state_dict(ckpt["model"])
    model.to(info.device)
    per_gpu = max(1, int(cfg.data.test_images_per_batch) // info.world_size)
    loader = build_test_loader(dataset, per_gpu, int(cfg.data.num_workers), info.rank, info.world_size,
                               int(cfg.data.size_divisibility))
    out_dir = checkpoint.parent / f"inference_{checkpoint.stem}"
    shards = run_inference(model, loader, out_dir, info.rank, info.world_size)
    results = out_dir / "results.json"
    if info.is_main:
        merge_shards(shards, results)
    du.barrier()
    return results
