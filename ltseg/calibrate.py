"""``python -m ltseg.calibrate checkpoint=<path.pt> calibration=simcal``: SimCal stage two.

Loads a trainer checkpoint and the config stored with it, freezes the model, trains new
classification heads with bi-level sampling (every calibrated stage of a cascade), saves
``model_calibrated.pt`` and evaluates the original / calibrated / dual-head predictions side
by side on the validation split. A checkpoint that is already calibrated is only evaluated
(with the current ``calibration.dual_head`` settings). Keys: conf/calibration/_main.yaml,
conf/calibration/simcal.yaml, docs/simcal.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ltseg.calibration.loop import evaluate_variants, format_side_by_side, freeze, predict_variants, train_heads
from ltseg.calibration.simcal import SimCal, box_stages, build_calibration_loss, resolve_stages
from ltseg.data.build import build_dataset
from ltseg.engine.checkpoint import CheckpointError, atomic_save, check_compatible, load_checkpoint
from ltseg.modeling import build_model
from ltseg.utils.paths import CONF_DIR

log = logging.getLogger("ltseg.calibrate")

CALIBRATED_NAME = "model_calibrated.pt"


def trained_config(ckpt: dict, path: Path, override: str | None) -> DictConfig:
    """The training run's resolved config: ``override`` YAML, else the one stored in the checkpoint,
    else ``config.yaml`` beside it."""
    if override:
        return OmegaConf.load(override)
    if ckpt.get("config_yaml"):
        return OmegaConf.create(ckpt["config_yaml"])
    beside = path.parent / "config.yaml"
    if beside.is_file():
        return OmegaConf.load(beside)
    raise CheckpointError(f"checkpoint {path} stores no config and there is no {beside}; pass config=<yaml>")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    return torch.device(name)


def build_simcal(model, stats, cal: DictConfig, path: Path, stored: dict | None) -> SimCal:
    """A fresh ``SimCal`` from ``cal``, or the stored one of a calibrated checkpoint (checked against ``cal``)."""
    if stored is not None:
        for key in ("head", "loss", "stages", "hidden_dim"):
            if key in stored["config"] and stored["config"][key] != _plain(cal.get(key)):
                raise CheckpointError(f"checkpoint {path} was calibrated with calibration.{key}="
                                      f"{stored['config'][key]!r} but the config says {_plain(cal.get(key))!r}")
    stages = resolve_stages(cal.stages, len(box_stages(model.roi_heads)))
    loss = build_calibration_loss(cal.loss, cal.get("loss_args"))
    simcal = SimCal(model, stats, cal.head, loss, stages, int(cal.hidden_dim), cal.dual_head)
    if stored is not None:
        check_compatible(simcal, stored["state"], f"{path} (calibrated heads)")
        simcal.load_state_dict(stored["state"])
    return simcal


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def run(cfg: DictConfig) -> dict:
    """Calibrate (unless already calibrated) and evaluate; returns ``{"checkpoint", "metrics", "train"}``."""
    path = Path(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    train_cfg = trained_config(ckpt, path, cfg.get("config"))
    if cfg.get("data"):
        train_cfg.data = OmegaConf.merge(train_cfg.data, cfg.data)
    device = resolve_device(cfg.device)
    train_set = build_dataset(train_cfg.data, "train")
    stats = train_set.stats
    model = build_model(train_cfg.model, instantiate(train_cfg.loss), stats)
    try:
        check_compatible(model, ckpt["model"], str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nthe config describes {stats.num_classes} classes "
                              f"(data {train_cfg.data.get('name')}), roi_heads {train_cfg.model.roi_heads._target_}, "
                              f"loss {train_cfg.loss._target_}") from None
    model.load_state_dict(ckpt["model"])
    model.to(device)
    freeze(model)

    stored = ckpt.get("simcal")
    simcal = build_simcal(model, stats, cfg.calibration, path, stored).to(device)
    out_dir = Path(cfg.output_dir) if cfg.get("output_dir") else path.parent / f"calibrated_{cfg.calibration.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    train_info = None
    calibrated = path
    if stored is None:
        log.info("calibrating stages %s of %s with head=%s loss=%s", simcal.stages, path, cfg.calibration.head,
                 cfg.calibration.loss)
        train_info = train_heads(simcal, model, train_set, cfg.calibration, device, generator, int(cfg.seed),
                                 int(train_cfg.data.get("size_divisibility", 32)), int(cfg.num_workers))
        calibration_cfg = OmegaConf.to_container(cfg.calibration, resolve=True)
        state = {
            "model": ckpt["model"], "iteration": ckpt["iteration"], "config_yaml": OmegaConf.to_yaml(train_cfg),
            "simcal": {"state": {k: v.detach().cpu() for k, v in simcal.state_dict().items()},
                       "config": calibration_cfg, "source": str(path), "train": train_info},
        }
        calibrated = atomic_save(state, out_dir / CALIBRATED_NAME)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(train_cfg))
        (out_dir / "calibration.yaml").write_text(OmegaConf.to_yaml(cfg.calibration))
        log.info("saved %s", calibrated)
    else:
        log.info("%s is already calibrated (stages %s): evaluating only", path, simcal.stages)

    metrics = None
    if cfg.evaluate:
        val_set = build_dataset(train_cfg.data, "val", stats)
        results = predict_variants(simcal, model, val_set, device, int(train_cfg.data.get("test_images_per_batch", 1)),
                                   int(cfg.get("num_workers", 0)))
        eval_cfg = train_cfg.get("eval") or {}
        metrics = evaluate_variants(results, val_set.ann_file, stats, train_cfg.data.get("bins", "lvis"),
                                    tuple(eval_cfg.get("iou_types", ("bbox", "segm"))), out_dir,
                                    eval_cfg.get("backend", "native"))
        table = format_side_by_side(metrics)
        (out_dir / "simcal_table.txt").write_text(table)
        print(table, end="")
    return {"checkpoint": calibrated, "metrics": metrics, "train": train_info}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="calibration/_main")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
