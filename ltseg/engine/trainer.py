"""The training loop, top to bottom: data -> forward under autocast -> backward (GradScaler for
fp16) -> one all-reduce of the logged values -> skip or step -> schedule -> log, checkpoint,
evaluate.

DDP: the model is wrapped in ``DistributedDataParallel``; each rank draws its own shard from
its sampler and computes its per-rank batch (global batch / world size); gradients are averaged
by DDP, so N ranks on B/N images equal one process on B images. Only rank 0 logs and writes.

Checkpoints hold everything needed for a bitwise-exact resume: model, optimizer, LR scheduler,
grad scaler, iteration, and per rank: sampler position and every RNG (python, numpy, torch,
CUDA, the stochastic-loss generator). Loss state buffers (Seesaw counts) live in the model's
state dict.

Signals: SIGTERM (preemption) and SIGINT (Ctrl-C) finish the current iteration, write a
checkpoint on every rank's agreement and return; a second SIGINT stops at once.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ltseg.data.lvis import CorruptImageError
from ltseg.engine import distributed as du
from ltseg.engine.checkpoint import (
    FINAL_NAME,
    CheckpointError,
    check_compatible,
    check_disk_space,
    checkpoint_bytes,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ltseg.engine.logging import MetricWriter, get_logger

class _StopEvaluation(Exception):
    """Raised by the signal handler to abandon an evaluation in progress."""


def _is_worker_image_error(e: RuntimeError) -> bool:
    """DataLoader workers re-raise exceptions they cannot rebuild as ``RuntimeError("Caught X ...")``."""
    return str(e).startswith(("Caught CorruptImageError", "Caught FileNotFoundError"))


AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Trainer:
    """Iteration-based trainer.

    Args:
        model: the unwrapped model, already on ``dist_info.device``; training mode returns a
            dict of scalar losses from ``model(images, image_sizes, targets)``.
        optimizer, scheduler: from :mod:`ltseg.engine.optim` (scheduler stepped every iteration).
        data_loader: iterable of ``Batch`` for this rank (per-rank batch), infinite.
        sampler: the loader's sampler, or None. The data position is checkpointed through
            ``data_loader.state_dict()`` when the loader has one, else ``sampler.state_dict()``.
        cfg: the ``trainer`` config section (see conf/config.yaml).
        max_iter: iterations to train; images_per_batch: global batch (for img/s).
        output_dir: run folder (checkpoints, metrics.jsonl, tensorboard/).
        dist_info: from :func:`ltseg.engine.distributed.init_distributed`.
        config_yaml: the resolved config, stored in every checkpoint.
        evaluate_fn: ``evaluate_fn(model, iteration) -> {iou_type: {metric: value}} | None``
            (called on every rank; rank 0 gets the metrics), or None.
        generators: named ``torch.Generator`` s the model draws from (``loss``: stochastic losses,
            ``sampling``: anchor/RoI samplers); their states are checkpointed per rank.
        extra_state: plain-Python entries stored in every checkpoint (e.g. ``stats``: the
            training CategoryStats as a dict, so evaluation needs no training annotations).
        visualize_fn: ``visualize_fn(model) -> (N, 3, H, W) uint8`` predictions drawn on a few
            val images, logged to TensorBoard at every evaluation (rank 0), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        data_loader: Iterable,
        sampler: Any,
        cfg: Mapping,
        max_iter: int,
        images_per_batch: int,
        output_dir: str | Path,
        dist_info: du.DistInfo = du.DistInfo(),
        config_yaml: str = "",
        evaluate_fn: Callable[[nn.Module, int], dict | None] | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        visualize_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> None:
        self.log = get_logger()
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data_loader = data_loader
        self.sampler = sampler
        self.max_iter = int(max_iter)
        self.images_per_batch = int(images_per_batch)
        self.output_dir = Path(output_dir)
        self.dist = dist_info
        self.device = dist_info.device
        self.config_yaml = config_yaml
        self.evaluate_fn = evaluate_fn
        self.generators = dict(generators or {})
        self.extra_state = dict(extra_state or {})
        self.visualize_fn = visualize_fn
        self.data_state = data_loader if hasattr(data_loader, "state_dict") else sampler
        amp = "off" if cfg["amp"] is False else str(cfg["amp"])  # YAML reads a bare `off` as false
        if amp not in AMP_DTYPES:
            raise ValueError(f"trainer.amp must be one of {sorted(AMP_DTYPES)}, got {cfg['amp']!r}")
        self.amp_dtype = AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.iteration = 0
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.corrupt_skipped = 0
        self.stop_signal: int | None = None
        self._previous_handlers: dict = {}
        self._evaluating = False

        if cfg["channels_last"]:
            model.to(memory_format=torch.channels_last)
        if cfg["compile"]:
            if not hasattr(model, "backbone"):
                raise ValueError("trainer.compile=true needs a model with a .backbone (backbone+FPN) module")
            model.backbone.compile()  # in place: state_dict keys stay unchanged
        self.ddp_model = model
        if dist_info.distributed:
            self.ddp_model = DistributedDataParallel(
                model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg["find_unused_parameters"]),
            )
        if dist_info.is_main:  # only rank 0 writes
            check_disk_space(self.output_dir, checkpoint_bytes(model, optimizer) * max(int(cfg["keep_last"]), 1))

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict | None:
        """Train from ``self.iteration`` to ``max_iter``; returns the final evaluation (rank 0) or
        None when stopped by a signal (``self.stop_signal`` says which)."""
        cfg = self.cfg
        log_period, ckpt_period, eval_period = (int(cfg[k]) for k in ("log_period", "checkpoint_period", "eval_period"))
        writer = MetricWriter(
            self.output_dir, enabled=self.dist.is_main, max_iter=self.max_iter, start_iter=self.iteration,
            images_per_batch=self.images_per_batch, tensorboard=bool(cfg["tensorboard"]),
            progress=bool(cfg["progress"]),
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = cfg["clip_grad_norm"]
        window: dict[str, list[float]] = {}
        restore_signals = self._install_signal_handlers()
        if self.dist.is_main and self.config_yaml:
            (self.output_dir / "config.yaml").write_text(self.config_yaml)  # resolved, beside the weights
        self.log.info(f"training iterations {self.iteration}..{self.max_iter} on {self.dist.world_size} process(es), "
                      f"{self.images_per_batch} images per batch, amp={self.amp_dtype or 'off'}")
        self.model.train()
        data_iter = iter(self.data_loader)
        try:
            while self.iteration < self.max_iter:
                it = self.iteration
                t_start = time.perf_counter()
                batch = self._next_batch(data_iter)
                if batch is None:  # a signal interrupted the data workers
                    break
                batch = batch.to(self.device, non_blocking=True)
                images = batch.images
                if cfg["channels_last"]:
                    images = images.contiguous(memory_format=torch.channels_last)
                t_data = time.perf_counter() - t_start
                if hasattr(self.model, "set_iteration"):
                    self.model.set_iteration(it)

                # forward (autocast) + backward (scaled for fp16); losses summed in fp32
                try:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        loss_dict = self.ddp_model(images, batch.image_sizes, batch.targets)
                    total = sum(v.float() for v in loss_dict.values())
                    self.scaler.scale(total).backward()
                except FloatingPointError as e:  # a loss refusing non-finite logits
                    if self.dist.distributed:
                        raise
                    self.log.warning(f"iteration {it}: {e}")
                    loss_dict, total = {}, torch.tensor(float("nan"), device=self.device)
                if self.scaler.is_enabled():
                    self.scaler.unscale_(self.optimizer)
                grads = [p.grad for p in params if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
                if clip is not None and grads:
                    torch.nn.utils.clip_grads_with_norm_(params, float(clip), grad_norm)

                # one collective per iteration: losses and grad norm (mean), stop request (any rank)
                names = [*loss_dict, "total_loss", "grad_norm"]
                flag = torch.tensor(float(self.stop_signal is not None), device=self.device)
                packed = torch.stack([*(v.detach().float() for v in loss_dict.values()), total.detach().float(),
                                      grad_norm.float(), flag])
                values = du.all_reduce_mean(packed).tolist()
                stop_requested = values.pop() > 0
                stats = dict(zip(names, values))

                # step, or skip a non-finite step (same decision on every rank: the values are reduced)
                if all(math.isfinite(v) for v in values):
                    if self.scaler.is_enabled():
                        self.scaler.step(self.optimizer)
                    else:
                        self.optimizer.step()
                    self.nonfinite_streak = 0
                else:
                    self._skip_nonfinite(it, stats)
                if self.scaler.is_enabled():
                    self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.iteration = it + 1

                # log, checkpoint, evaluate
                t_iter = time.perf_counter() - t_start
                stats.update(lr=self.optimizer.param_groups[0]["lr"], time=t_iter, data_time=t_data)
                for k, v in stats.items():
                    window.setdefault(k, []).append(v)
                writer.progress(self.iteration, t_iter, stats["total_loss"])
                if self.iteration % log_period == 0 or self.iteration == self.max_iter:
                    writer.scalars(self.iteration, self._summarise(window))
                    window.clear()
                if stop_requested:
                    self._stop(writer)
                    return None
                if ckpt_period > 0 and self.iteration % ckpt_period == 0 and self.iteration < self.max_iter:
                    self.save(checkpoint_name(self.iteration))
                if eval_period > 0 and self.iteration % eval_period == 0 and self.iteration < self.max_iter:
                    self._evaluate(writer)
                    if self.stop_signal is not None:
                        self._stop(writer)
                        return None
            else:
                self.save(FINAL_NAME)
                return self._evaluate(writer)
            self._stop(writer)  # the data loader broke because of a stop signal
            return None
        except Exception as e:  # say which rank failed where; peers then fail on the next collective
            self.log.error(f"rank {self.dist.rank}: training failed at iteration {self.iteration}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            raise
        finally:
            restore_signals()
            writer.close()

    def _next_batch(self, data_iter):
        """Next batch; a batch with a corrupt or missing image is skipped and counted, up to
        ``max_corrupt_fraction * max_iter`` batches. None when a stop signal broke the loader."""
        while True:
            try:
                return next(data_iter)
            except (CorruptImageError, FileNotFoundError) as e:
                self._skip_corrupt(e)
            except RuntimeError as e:
                if _is_worker_image_error(e):  # re-raised from a DataLoader worker as RuntimeError
                    self._skip_corrupt(e)
                elif self.stop_signal is None:  # a real data-loading failure
                    raise
                else:
                    return None  # the signal also reached the loader's worker processes

    def _skip_corrupt(self, error: Exception) -> None:
        self.corrupt_skipped += 1
        budget = float(self.cfg["max_corrupt_fraction"]) * self.max_iter
        self.log.warning(f"iteration {self.iteration}: skipped a batch ({self.corrupt_skipped} so far): {error}")
        if self.corrupt_skipped > budget:
            raise RuntimeError(
                f"{self.corrupt_skipped} batches skipped for corrupt or missing images, more than "
                f"trainer.max_corrupt_fraction={self.cfg['max_corrupt_fraction']} of {self.max_iter} "
                f"iterations; last: {error}"
            ) from error

    def _skip_nonfinite(self, it: int, stats: Mapping[str, float]) -> None:
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        shown = ", ".join(f"{k}={v:.4g}" for k, v in stats.items())
        # off CPU the losses do not test their logits eagerly (a host sync): a non-finite
        # classification logit surfaces here, as a NaN classification loss
        cls = [k for k, v in stats.items() if "loss_cls" in k and not math.isfinite(v)]
        why = f"; {', '.join(cls)}: non-finite classification logits or loss" if cls else ""
        self.log.warning(f"iteration {it}: non-finite loss or gradient ({shown}){why}; step skipped "
                         f"({self.nonfinite_streak} in a row)")
        limit = int(self.cfg["max_nonfinite"])
        if self.nonfinite_streak >= limit:
            raise FloatingPointError(
                f"iteration {it}: {self.nonfinite_streak} consecutive non-finite steps "
                f"(trainer.max_nonfinite={limit}); last values: {shown}{why}"
            )

    def _summarise(self, window: Mapping[str, list[float]]) -> dict[str, float]:
        out = {k: sum(v) / len(v) for k, v in window.items()}
        out["img_per_s"] = self.images_per_batch / out["time"] if out.get("time") else float("nan")
        if self.scaler.is_enabled():
            out["loss_scale"] = float(self.scaler.get_scale())
        if self.device.type == "cuda":
            out["memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out

    def _evaluate(self, writer: MetricWriter) -> dict | None:
        if self.evaluate_fn is None:
            return None
        self._evaluating = True
        try:
            metrics = self.evaluate_fn(self.model, self.iteration)
        except _StopEvaluation:
            name = signal.Signals(self.stop_signal).name
            self.log.warning(f"evaluation at iteration {self.iteration} interrupted by {name}")
            return None
        finally:
            self._evaluating = False
            self.model.train()
        if metrics is not None:
            writer.evaluation(self.iteration, metrics)
        if self.visualize_fn is not None and self.dist.is_main and writer.tb is not None:
            writer.images(self.iteration, "val/predictions", self.visualize_fn(self.model))
            self.model.train()
        return metrics

    def _stop(self, writer: MetricWriter) -> None:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
        self.log.warning(f"stopping at iteration {self.iteration} on {name}: writing a checkpoint")
        self.save(checkpoint_name(self.iteration))
        chained = self._previous_handlers.get(self.stop_signal)
        # e.g. submitit's USR1 handler: requeue the job, which then resumes with resume=auto
        if self.stop_signal == getattr(signal, "SIGUSR1", None) and callable(chained):
            chained(self.stop_signal, None)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT set ``stop_signal``; a second SIGINT raises KeyboardInterrupt at once.
        SIGUSR1 too when a launcher installed a handler for it (submitit's requeue on SLURM
        time-out): the checkpoint is written first, then that handler runs."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        owner = os.getpid()

        def on_signal(signum, frame):
            if os.getpid() != owner:  # a forked child (data or evaluation worker): default action
                previous = self._previous_handlers.get(signum, signal.SIG_DFL)
                if callable(previous):
                    return previous(signum, frame)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return None
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            if self._evaluating:  # evaluation can take long: abandon it, checkpoint and stop
                raise _StopEvaluation
            return None

        signals = [signal.SIGTERM, signal.SIGINT]
        if hasattr(signal, "SIGUSR1") and callable(signal.getsignal(signal.SIGUSR1)):
            signals.append(signal.SIGUSR1)
        self._previous_handlers = {s: signal.signal(s, on_signal) for s in signals}

        def restore() -> None:
            for s, handler in self._previous_handlers.items():
                signal.signal(s, handler)

        return restore

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; per-rank parts (RNGs, data position) gathered from all ranks."""
        mine = {"rng": rng_state(), "generators": {k: g.get_state() for k, g in self.generators.items()}}
        if self.data_state is not None:
            mine["data"] = self.data_state.state_dict()
        return {
            **self.extra_state,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "per_rank": du.all_gather_object(mine),
            "world_size": self.dist.world_size,
            "counters": {"skipped_steps": self.skipped_steps, "corrupt_skipped": self.corrupt_skipped},
            "config_yaml": self.config_yaml,
        }

    def save(self, name: str) -> Path | None:
        """Collective: every rank contributes its state; rank 0 writes ``output_dir/name``."""
        state = self.state_dict()
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.output_dir, name, state, keep_last=int(self.cfg["keep_last"]))
            self.log.info(f"saved {path}")
        du.barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Restore the full training state from ``path`` (see :meth:`state_dict`)."""
        ckpt = load_checkpoint(path)
        check_compatible(self.model, ckpt["model"], str(path))
        self.model.load_state_dict(ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        counters = ckpt.get("counters", {})
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self.corrupt_skipped = int(counters.get("corrupt_skipped", 0))
        per_rank = ckpt.get("per_rank", [])
        if len(per_rank) != self.dist.world_size:
            self.log.warning(
                f"checkpoint {path} was written by {len(per_rank)} process(es), this run has "
                f"{self.dist.world_size}: sampler positions and RNG streams restart from the seed"
            )
        else:
            mine = per_rank[self.dist.rank]
            set_rng_state(mine["rng"])
            if "data" in mine and self.data_state is not None:
                self.data_state.load_state_dict(mine["data"])
            for name, g in self.generators.items():
                if name in mine["generators"]:
                    g.set_state(mine["generators"][name])
        self.log.info(f"resumed from {path} at iteration {self.iteration}")

    def resume_or_start(self, resume: bool | str) -> None:
        """``resume``: False = fresh; True = latest checkpoint in ``output_dir`` (error if none);
        ``"auto"`` = latest if any, else fresh; any other string = that checkpoint file."""
        if resume is False or resume is None or resume == "false":
            return
        if resume is True or resume in ("true", "auto"):
            path = latest_checkpoint(self.output_dir)
            if path is None:
                if resume == "auto":
                    self.log.info(f"resume=auto: no checkpoint in {self.output_dir}, starting fresh")
                    return
                raise CheckpointError(
                    f"resume=true but {self.output_dir} holds no checkpoint; use resume=auto to start "
                    "fresh when none exists, or resume=<path to a .pt file>"
                )
        else:
            path = Path(resume)
        self.load(path)
