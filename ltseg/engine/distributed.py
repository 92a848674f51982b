"""Process-group set-up and the few collectives the trainer uses.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) or as a multi-task SLURM job through hydra-submitit-launcher; without those
variables everything runs as a single process. NCCL on CUDA,
gloo on CPU. Every collective here runs under the process group's timeout and turns a timeout
into an error that says another rank probably died, instead of hanging forever.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but CUDA is not available; use device=cpu or device=auto")
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")


def export_submitit_env() -> None:
    """Inside a multi-task SLURM job started by submitit (hydra-submitit-launcher), set torchrun's
    variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (or a submitit SLURM job's);
    a no-op for one process."""
    export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=timedelta(seconds=float(timeout_s)),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _guard(op: str, fn, *args, **kwargs):
    """Run a collective; a timeout or broken peer becomes a message naming this rank and op."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as e:  # gloo/NCCL timeouts and closed peers
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise RuntimeError(
            f"rank {rank}: collective '{op}' failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "another rank probably crashed or hung - check its log (trainer.collective_timeout_s sets the wait)"
        ) from e


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        _guard("barrier", dist.barrier)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a float tensor over ranks (identity for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        _guard("all_reduce", dist.all_reduce, values)
        values /= dist.get_world_size()
    return values


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        _guard("broadcast_object", dist.broadcast_object_list, box, src=src)
        return box[0]
    return obj


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        _guard("all_gather_object", dist.all_gather_object, out, obj)
        return out
    return [obj]


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
