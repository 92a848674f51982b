"""Training telemetry on rank 0: JSON lines, TensorBoard (optional) and a tqdm progress bar.

``metrics.jsonl`` gets one object per logged iteration (``{"iteration": i, "loss_cls": ...}``)
and one per evaluation (``{"iteration": i, "eval": {"bbox": {...}, "segm": {...}}}``).
TensorBoard degrades to a one-line notice when the package is missing. Non-main ranks get a
writer whose methods do nothing.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger("ltseg")


def get_logger() -> logging.Logger:
    """The ``ltseg`` logger; under Hydra it also goes to the run's log file."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # tensorboard not installed or broken
        get_logger().warning(f"TensorBoard disabled ({type(e).__name__}: {e}); metrics still go to metrics.jsonl")
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricWriter:
    """Writes scalars, evaluation metrics and images; drives the progress bar.

    Args:
        output_dir: the run folder; ``metrics.jsonl`` and ``tensorboard/`` go there.
        enabled: False on ranks other than 0.
        max_iter, start_iter: for the progress bar (ETA).
        images_per_batch: global batch size (for img/s).
        tensorboard, progress: switch the two optional sinks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        max_iter: int = 0,
        start_iter: int = 0,
        images_per_batch: int = 1,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.images_per_batch = images_per_batch
        self.tb = None
        self.bar = None
        self.jsonl = None
        if not enabled:
            return
        out = Path(output_dir)
        self.jsonl = open(out / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            self.tb = _tensorboard_writer(out / "tensorboard")
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_iter, initial=start_iter, unit="it", dynamic_ncols=True, file=sys.stderr)

    def scalars(self, iteration: int, values: Mapping[str, float], prefix: str = "train/") -> None:
        """One JSON line and one TensorBoard scalar per key (non-finite values are written as null)."""
        if not self.enabled:
            return
        row = {"iteration": iteration}
        row.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self.jsonl.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(prefix + k, v, iteration)

    def evaluation(self, iteration: int, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Evaluation metrics ``{iou_type: {metric: value}}`` (AP, APr/c/f, AP1..AP4, ...)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"iteration": iteration, "eval": metrics}) + "\n")
        if self.tb is not None:
            for iou_type, values in metrics.items():
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        self.tb.add_scalar(f"eval_{iou_type}/{k}", v, iteration)

    def images(self, iteration: int, tag: str, images: torch.Tensor) -> None:
        """``(N, 3, H, W)`` uint8 images to TensorBoard (e.g. predictions drawn on val images)."""
        if self.enabled and self.tb is not None and len(images):
            self.tb.add_images(tag, images, iteration, dataformats="NCHW")

    def progress(self, iteration: int, seconds_per_iter: float, loss: float) -> None:
        """Advance the bar to ``iteration`` (1-based count of finished iterations)."""
        if self.bar is None:
            return
        self.bar.update(iteration - self.bar.n)
        ips = self.images_per_batch / seconds_per_iter if seconds_per_iter > 0 else float("nan")
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        self.bar = self.tb = self.jsonl = None
