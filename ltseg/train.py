"""``python -m ltseg.train [overrides]`` (console script ``ltseg-train``): build, train, evaluate.

Composes the Hydra groups model, data, loss, sampler, schedule (conf/config.yaml). Multi-GPU and
multi-node: ``torchrun --nproc_per_node=N -m ltseg.train ...`` (docs/training.md).
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ltseg.data.build import build_dataset, build_test_loader, build_train_loader
from ltseg.engine import distributed as du
from ltseg.engine.checkpoint import ensure_writable_dir
from ltseg.engine.inference import draw_predictions, merge_shards, run_inference
from ltseg.engine.logging import get_logger
from ltseg.engine.optim import build_lr_scheduler, build_optimizer
from ltseg.engine.trainer import AMP_DTYPES, Trainer
from ltseg.modeling import build_model
from ltseg.utils.paths import CONF_DIR


def short_dirname(text: str, max_len: int = 80) -> str:
    """A run-folder name from Hydra's ``override_dirname``: no ``/``, at most ``max_len`` characters
    (long names end in a hash of the full text). Resolver ``ltseg_dirname`` in conf/config.yaml."""
    text = text.replace("/", "_")
    if len(text) <= max_len:
        return text
    return f"{text[: max_len - 9]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("ltseg_dirname", short_dirname, replace=True)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; ``deterministic`` turns on PyTorch's deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_output_dir(cfg: DictConfig) -> Path:
    """``trainer.output_dir`` if set, else Hydra's run dir (rank 0's, so all ranks agree)."""
    if cfg.trainer.get("output_dir"):
        out = cfg.trainer.output_dir
    elif HydraConfig.initialized():
        out = HydraConfig.get().runtime.output_dir
    else:
        raise ValueError("trainer.output_dir is not set and Hydra is not running")
    return Path(du.broadcast_object(str(out)))


def build_on_rank0_first(fn, info: du.DistInfo):
    """Run ``fn`` on rank 0 (e.g. dataset generation), then on the others."""
    if info.is_main:
        result = fn()
    du.barrier()
    if not info.is_main:
        result = fn()
    return result


def make_evaluator(cfg: DictConfig, val_dataset, stats, info: du.DistInfo, output_dir: Path, amp_dtype):
    """``evaluate(model, iteration) -> metrics`` (rank 0; None elsewhere): sharded inference, merged
    ``results.json``, ``metrics.json`` and the printed LVIS table."""
    per_gpu = max(1, int(cfg.data.test_images_per_batch) // info.world_size)
    log = get_logger()

    def evaluate(model: nn.Module, iteration: int) -> dict | None:
        from ltseg.evaluation import evaluate_results, format_table

        out = output_dir / "inference" / f"iter_{iteration:07d}"
        loader = build_test_loader(val_dataset, per_gpu, int(cfg.data.num_workers), info.rank, info.world_size,
                                   int(cfg.data.size_divisibility))
        shards = run_inference(model, loader, out, info.rank, info.world_size, amp_dtype=amp_dtype)
        if not info.is_main:
            return None
        results = merge_shards(shards, out / "results.json")
        for shard in shards:
            shard.unlink()
        metrics = evaluate_results(
            val_dataset.ann_file, results, iou_types=tuple(cfg.eval.iou_types),
            train_stats=stats if cfg.eval.train_stats else None, bins=cfg.eval.bins, output_dir=out,
            backend=cfg.eval.backend, max_dets=int(cfg.eval.max_dets),
        )
        log.info(f"evaluation at iteration {iteration} ({out}):\n{format_table(metrics)}")
        return metrics

    return evaluate


def make_visualizer(cfg: DictConfig, val_dataset):
    """``visualize(model) -> (N, 3, H, W) uint8``: the first ``eval.num_vis_images`` val images."""
    indices = list(range(min(int(cfg.eval.num_vis_images), len(val_dataset))))
    divisibility = int(cfg.data.size_divisibility)
    return lambda model: draw_predictions(model, val_dataset, indices, size_divisibility=divisibility)


def run(cfg: DictConfig) -> dict | None:
    """Train and evaluate as ``cfg`` says; returns rank 0's final metrics (None elsewhere or when stopped)."""
    log = get_logger()
    info = du.init_distributed(str(cfg.device), float(cfg.trainer.collective_timeout_s))
    seed_everything(int(cfg.seed) + info.rank, bool(cfg.deterministic))
    output_dir = resolve_output_dir(cfg)
    if info.is_main:
        ensure_writable_dir(output_dir)
        log.info(f"run folder: {output_dir}")
    global_batch = int(cfg.schedule.get("images_per_batch") or cfg.data.images_per_batch)
    if global_batch % info.world_size:
        raise ValueError(f"schedule.images_per_batch={global_batch} is not divisible by {info.world_size} processes")

    train_ds = build_on_rank0_first(lambda: build_dataset(cfg.data, "train"), info)
    stats = train_ds.stats
    val_ds = build_dataset(cfg.data, "val", stats)
    model = build_model(cfg.model, instantiate(cfg.loss), stats)
    if cfg.trainer.sync_bn and info.distributed:
        if info.device.type != "cuda":
            log.warning("trainer.sync_bn needs CUDA; keeping per-process BatchNorm")
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    generators = {
        "loss": torch.Generator(info.device).manual_seed(int(cfg.seed) * 1000 + 1 + info.rank),
        "sampling": torch.Generator(info.device).manual_seed(int(cfg.seed) * 1000 + 2 + info.rank),
    }
    model.set_loss_generator(generators["loss"])
    model.set_sampling_generator(generators["sampling"])

    sampler = instantiate(cfg.sampler, dataset=train_ds, seed=int(cfg.seed), rank=info.rank,
                          world_size=info.world_size)
    loader = build_train_loader(train_ds, sampler, global_batch // info.world_size, int(cfg.data.num_workers),
                                bool(cfg.data.aspect_grouping), int(cfg.data.size_divisibility),
                                pin_memory=info.device.type == "cuda")
    optimizer = build_optimizer(model, cfg.schedule)
    scheduler = build_lr_scheduler(optimizer, cfg.schedule)
    amp = "off" if cfg.trainer.amp is False else str(cfg.trainer.amp)
    evaluate_fn = None
    if cfg.eval.enabled:
        evaluate_fn = make_evaluator(cfg, val_ds, stats, info, output_dir, AMP_DTYPES.get(amp))
    visualize_fn = make_visualizer(cfg, val_ds) if cfg.eval.enabled and cfg.eval.num_vis_images > 0 else None
    trainer = Trainer(
        model, optimizer, scheduler, loader, sampler, cfg.trainer,
        max_iter=int(cfg.schedule.max_iter), images_per_batch=global_batch, output_dir=output_dir,
        dist_info=info, config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        evaluate_fn=evaluate_fn, visualize_fn=visualize_fn, generators=generators,
        extra_state={"stats": stats.to_dict()},
    )
    trainer.resume_or_start(cfg.resume)
    metrics = trainer.train()
    if trainer.stop_signal is not None:
        raise SystemExit(128 + int(trainer.stop_signal))
    du.barrier()
    du.cleanup()
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """Console-script entry point (``ltseg-train``)."""
    hydra_main()


if __name__ == "__main__":
    main()
