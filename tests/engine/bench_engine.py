"""Engine benchmarks on CPU, side by side in one run (results in docs/benchmarks_engine.md).

1. Trainer overhead: ``Trainer.train`` vs a bare forward/backward/step loop on the real tiny
   model and the same batch, interleaved, median over repeats.
2. Autocast on CPU: fp32 vs bf16 vs fp16 train steps of the tiny model (same loop, interleaved).
3. Checkpoints: atomic save and ``weights_only`` load of a full training state (tiny and R50-FPN).

Run: ``OMP_NUM_THREADS=2 python -m tests.engine.bench_engine [--iters 8 --repeats 5]``.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ltseg.data.build import build_dataset
from ltseg.data.collate import collate
from ltseg.engine.checkpoint import load_checkpoint
from ltseg.engine.optim import build_lr_scheduler, build_optimizer
from ltseg.engine.trainer import Trainer
from ltseg.modeling import build_model
from tests.test_train_e2e import SMALL

ROOT = Path(__file__).resolve().parents[2]


def setup(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    ds = build_dataset(cfg.data, "train")
    torch.manual_seed(0)
    model = build_model(cfg.model, instantiate(cfg.loss), ds.stats)
    batch = collate([ds[i] for i in range(int(cfg.schedule.images_per_batch))], 32)
    return cfg, ds, model, batch


def bare_loop(model, optimizer, batch, iters: int, amp_dtype=None) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = model(batch.images, batch.image_sizes, batch.targets)
        sum(v.float() for v in losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / iters


def trainer_loop(cfg, model, optimizer, batch, iters: int, out: Path) -> float:
    scheduler = build_lr_scheduler(optimizer, cfg.schedule)
    tcfg = cfg.trainer.copy()
    tcfg.merge_with({"checkpoint_period": 0, "tensorboard": False, "progress": False, "log_period": iters})
    trainer = Trainer(model, optimizer, scheduler, itertools.repeat(batch), None, tcfg, max_iter=iters,
                      images_per_batch=len(batch), output_dir=out)
    trainer.save = lambda name: None  # measure the loop, not the final checkpoint
    t0 = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - t0) / iters


def bench_overhead(iters: int, repeats: int) -> None:
    cfg, _, model, batch = setup()
    optimizer = build_optimizer(model, cfg.schedule)
    bare_loop(model, optimizer, batch, 2)  # warm-up
    bare, loop = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternate which goes first
            if r % 2:
                loop.append(trainer_loop(cfg, model, optimizer, batch, iters, Path(tmp)))
            bare.append(bare_loop(model, optimizer, batch, iters))
            if not r % 2:
                loop.append(trainer_loop(cfg, model, optimizer, batch, iters, Path(tmp)))
    b, t = statistics.median(bare), statistics.median(loop)
    print(f"trainer overhead (tiny, {len(batch)} images of 128 px): bare {b * 1e3:.0f} ms/it, "
          f"Trainer {t * 1e3:.0f} ms/it, ratio Trainer/bare = {t / b:.3f}")


def bench_autocast(iters: int, repeats: int, names: list[str]) -> None:
    cfg, _, model, batch = setup()
    optimizer = build_optimizer(model, cfg.schedule)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    modes = {k: dtypes[k] for k in names}
    times = {k: [] for k in modes}
    for dtype in modes.values():
        bare_loop(model, optimizer, batch, 1, dtype)
    for r in range(repeats):
        for name, dtype in list(modes.items())[r % 3:] + list(modes.items())[: r % 3]:  # rotate the order
            times[name].append(bare_loop(model, optimizer, batch, iters, dtype))
    base = statistics.median(times["fp32"])
    print("CPU autocast, tiny train step: " + ", ".join(
        f"{k} {statistics.median(v) * 1e3:.0f} ms ({statistics.median(v) / base:.2f}x fp32)" for k, v in times.items()))


def bench_checkpoint(repeats: int) -> None:
    for name in ("tiny", "mask_rcnn_r50_fpn"):
        cfg, _, model, batch = setup(f"model={name}", "model.backbone.weights=null")
        optimizer = build_optimizer(model, cfg.schedule)
        for p in model.parameters():  # momentum buffers, like a real run's optimizer state
            p.grad = torch.zeros_like(p)
        optimizer.step()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model, optimizer, build_lr_scheduler(optimizer, cfg.schedule), [batch], None,
                              cfg.trainer, max_iter=1, images_per_batch=1, output_dir=tmp)
            save, load = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                path = trainer.save("checkpoint_0000001.pt")
                save.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                load_checkpoint(path)
                load.append(time.perf_counter() - t0)
            size = path.stat().st_size / 2**20
        print(f"checkpoint {name}: {size:.1f} MiB, save {statistics.median(save) * 1e3:.0f} ms, "
              f"weights_only load {statistics.median(load) * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--autocast", nargs="*", default=["fp32", "bf16"], help="modes to compare (fp16 on CPU is very slow)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["overhead", "autocast", "checkpoint"])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "overhead" not in args.skip:
        bench_overhead(args.iters, args.repeats)
    if "autocast" not in args.skip and len(args.autocast) > 1:
        bench_autocast(max(2, args.iters // 2), args.repeats, args.autocast)
    if "checkpoint" not in args.skip:
        bench_checkpoint(args.repeats)


if __name__ == "__main__":
    main()
