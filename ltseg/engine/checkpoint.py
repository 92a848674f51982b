"""Checkpoints: atomic writes, keep-last-k rotation, ``weights_only`` loading, RNG capture.

A checkpoint is ``torch.save`` of tensors and plain Python only, so ``torch.load(...,
weights_only=True)`` reads it; the resolved config lives beside it as ``config.yaml`` (and as a
plain YAML string inside). Files: ``<dir>/checkpoint_<iteration:07d>.pt`` and
``<dir>/model_final.pt``, and ``<dir>/last_checkpoint`` naming the newest.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{7,})\.pt$")
FINAL_NAME = "model_final.pt"
LAST_POINTER = "last_checkpoint"  # text file: name of the newest checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names file and keys."""


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}.pt"


def atomic_save(obj: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the periodic checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The file named in ``<dir>/last_checkpoint`` (written after every save), else the newest
    periodic checkpoint; None if there is none."""
    directory = Path(directory)
    pointer = directory / LAST_POINTER
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if named.is_file():
            return named
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic checkpoints (0 keeps all); returns the deleted."""
    found = list_checkpoints(directory)
    if keep_last <= 0 or len(found) <= keep_last:
        return []
    doomed = [p for _, p in found[:-keep_last]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def save_checkpoint(directory: str | Path, name: str, state: Mapping[str, Any], keep_last: int = 0) -> Path:
    """Atomically write ``state`` as ``directory/name``, point ``last_checkpoint`` at it, prune."""
    path = atomic_save(state, Path(directory) / name)
    atomic_write_text(name + "\n", Path(directory) / LAST_POINTER)
    prune_checkpoints(directory, keep_last)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU; unreadable files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no 'model'/'iteration' entries: not an ltseg checkpoint")
    return ckpt


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint {source} does not fit the model (different config: class count, head type, loss?)"]
    for title, items in (("shape mismatch", shapes), ("missing in checkpoint", missing), ("not in model", unexpected)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    raise CheckpointError("\n".join(lines))


def ensure_writable_dir(directory: str | Path) -> Path:
    """Create ``directory`` and prove it writable with a probe file; a clear OSError otherwise."""
    directory = Path(directory)
    probe = directory / f".write_test{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(
            f"output directory {directory} is not writable ({type(e).__name__}: {e.strerror or e}); "
            "fix permissions or set trainer.output_dir (or hydra.run.dir) elsewhere"
        ) from e
    return directory


def check_disk_space(directory: str | Path, needed_bytes: int) -> None:
    """Fail early when the file system holding ``directory`` has less than ``needed_bytes`` free."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OSError(
            f"output directory {directory}: only {free / 2**20:.0f} MiB free, checkpoints need about "
            f"{needed_bytes / 2**20:.0f} MiB; free space or set trainer.output_dir elsewhere"
        )


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Rough size of one checkpoint: parameters, buffers and the optimizer's per-parameter state."""
    tensors = list(model.state_dict().values())
    n = sum(t.numel() * t.element_size() for t in tensors)
    per_param_state = max((len(s) for s in optimizer.state.values()), default=1)
    return int(n * (1 + max(per_param_state, 1)) + 2**20)


# ---------------------------------------------------------------- random number generators
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) global RNG states as tensors / plain Python."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys_t, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys_t.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
