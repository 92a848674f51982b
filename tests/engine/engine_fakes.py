"""A tiny fake model, dataset, sampler and loader for engine tests, and a runnable training script.

The fake model has what matters for the engine: dropout (global torch RNG), a stochastic loss
term drawn from the loss generator, a persistent state buffer (like Seesaw's counts), numpy and
python RNG use, and optional NaN losses or sleeps at chosen iterations.

Run ``python -m tests.engine.engine_fakes --out DIR [--max-iter N] [--resume auto] ...`` from
the repository root; under RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT it joins a gloo group.
The final parameters go to ``DIR/params_rank<r>.pt``.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from ltseg.data.collate import Batch
from ltseg.data.lvis import CorruptImageError
from ltseg.engine import distributed as du
from ltseg.engine.optim import build_lr_scheduler, build_optimizer
from ltseg.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4


def trainer_cfg(**overrides):
    """The ``trainer`` section of conf/config.yaml with overrides (progress bar off)."""
    cfg = OmegaConf.load(ROOT / "conf" / "config.yaml").trainer
    cfg.progress = False
    cfg.tensorboard = False
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def schedule_cfg(**overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "schedule" / "demo.yaml")
    cfg.merge_with(dict(max_iter=12, images_per_batch=4, base_lr=0.05, warmup_iters=3, steps=[8]))
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


class FakeDataset:
    def __init__(self, n: int = 32, size: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        colour = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])[self.labels]  # learnable
        noise = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64).float()
        self.images = noise + 2 * colour[:, :, None, None]

    def __len__(self) -> int:
        return len(self.labels)


class FakeSampler:
    """Infinite, rank-sharded: epoch permutation ``p``; rank r yields ``p[r::world_size]``."""

    def __init__(self, dataset, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = len(dataset), seed, rank, world_size
        self.epoch, self.offset = 0, 0

    def __iter__(self):
        while True:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            shard = perm[self.rank :: self.world_size].tolist()
            while self.offset < len(shard):
                self.offset += 1
                yield shard[self.offset - 1]
            self.epoch, self.offset = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state):
        self.epoch, self.offset = state["epoch"], state["offset"]


class FakeLoader:
    """Batches of ``per_gpu`` samples; a batch holding an index in ``corrupt`` raises CorruptImageError."""

    def __init__(self, dataset, sampler, per_gpu: int, corrupt=(), sleep: float = 0.0):
        self.dataset, self.sampler, self.per_gpu = dataset, sampler, per_gpu
        self.corrupt, self.sleep = set(corrupt), sleep

    def __iter__(self):
        return _FakeLoaderIter(self)


class _FakeLoaderIter:
    def __init__(self, loader: FakeLoader):
        self.loader, self.indices = loader, iter(loader.sampler)

    def __next__(self) -> Batch:
        ld = self.loader
        idx = [next(self.indices) for _ in range(ld.per_gpu)]
        if ld.sleep:
            time.sleep(ld.sleep)
        bad = ld.corrupt.intersection(idx)
        if bad:
            raise CorruptImageError(f"images/{min(bad)}.png", min(bad), "truncated PNG")
        images = ld.dataset.images[idx]
        targets = [{"labels": ld.dataset.labels[i : i + 1]} for i in idx]
        return Batch(images=images, image_sizes=[(8, 8)] * len(idx), orig_sizes=[(8, 8)] * len(idx),
                     image_ids=idx, targets=targets)


class FakeModel(nn.Module):
    def __init__(self, dropout: float = 0.2, nan_at=(), noise_weight: float = 0.01):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, NUM_CLASSES)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("seen", torch.zeros(NUM_CLASSES, dtype=torch.float64))  # like Seesaw counts
        self.nan_at, self.noise_weight = set(nan_at), noise_weight
        self.generator: torch.Generator | None = None
        self.iteration = 0

    def set_loss_generator(self, g: torch.Generator) -> None:
        self.generator = g

    def set_iteration(self, it: int) -> None:
        self.iteration = it

    def forward(self, images, image_sizes, targets=None):
        x = self.dropout(F.relu(self.norm(self.conv(images)))).mean(dim=(2, 3))
        logits = self.fc(x)
        if not self.training:
            return logits
        labels = torch.cat([t["labels"] for t in targets])
        self.seen += torch.bincount(labels, minlength=NUM_CLASSES).double()
        noise = torch.rand(logits.shape, generator=self.generator)
        jitter = float(np.random.rand() + random.random())  # numpy and python RNG in the loss
        loss_noise = self.noise_weight * (logits.float() * noise).mean() * jitter
        loss_cls = F.cross_entropy(logits.float(), labels)
        if self.iteration in self.nan_at:
            loss_cls = loss_cls * float("nan")
        return {"loss_cls": loss_cls, "loss_noise": loss_noise}


def build(out: str | Path, dist_info: du.DistInfo = du.DistInfo(), *, global_batch: int = 4, seed: int = 0,
          trainer_overrides=None, schedule_overrides=None, model_kwargs=None, corrupt=(), sleep: float = 0.0):
    """A Trainer on the fake parts, seeded like ltseg.train does (seed + rank for RNG streams)."""
    torch.manual_seed(seed + dist_info.rank)
    np.random.seed(seed + dist_info.rank)
    random.seed(seed + dist_info.rank)
    schedule = schedule_cfg(**(schedule_overrides or {}))
    model = FakeModel(**(model_kwargs or {}))
    gen = torch.Generator().manual_seed(seed + 1000 + dist_info.rank)
    model.set_loss_generator(gen)
    dataset = FakeDataset()
    sampler = FakeSampler(dataset, seed, dist_info.rank, dist_info.world_size)
    loader = FakeLoader(dataset, sampler, global_batch // dist_info.world_size, corrupt, sleep)
    optimizer = build_optimizer(model, schedule)
    scheduler = build_lr_scheduler(optimizer, schedule)
    Path(out).mkdir(parents=True, exist_ok=True)
    return Trainer(model, optimizer, scheduler, loader, sampler, trainer_cfg(**(trainer_overrides or {})),
                   max_iter=schedule.max_iter, images_per_batch=global_batch, output_dir=out,
                   dist_info=dist_info, config_yaml="fake: true\n", generators={"loss": gen})


def _fail_at(iteration: int, hang: bool = False):
    def set_iteration(it: int) -> None:
        if it == iteration and hang:
            time.sleep(3600)
        if it == iteration:
            raise RuntimeError(f"injected failure at iteration {it}")
    return set_iteration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-iter", type=int, default=12)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--resume", default="false")
    ap.add_argument("--checkpoint-period", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--noise-weight", type=float, default=0.01)
    ap.add_argument("--fail-rank", type=int, default=-1, help="this rank raises at iteration 3")
    ap.add_argument("--hang-rank", type=int, default=-1, help="this rank sleeps at iteration 3")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist_info = du.init_distributed("cpu", timeout_s=args.timeout)
    trainer = build(args.out, dist_info, global_batch=args.global_batch,
                    trainer_overrides={"checkpoint_period": args.checkpoint_period, "keep_last": 2},
                    schedule_overrides={"max_iter": args.max_iter},
                    model_kwargs={"dropout": args.dropout, "noise_weight": args.noise_weight}, sleep=args.sleep)
    trainer.resume_or_start({"false": False, "true": True}.get(args.resume, args.resume))
    if args.fail_rank == dist_info.rank:
        trainer.model.set_iteration = _fail_at(3)
    if args.hang_rank == dist_info.rank:
        trainer.model.set_iteration = _fail_at(3, hang=True)
    trainer.train()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()},
               Path(args.out) / f"params_rank{dist_info.rank}.pt")
    print(f"DONE stop_signal={trainer.stop_signal} iteration={trainer.iteration}", flush=True)
    du.cleanup()
    raise SystemExit(128 + trainer.stop_signal if trainer.stop_signal else 0)


if __name__ == "__main__":
    main()
