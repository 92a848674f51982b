"""``python -m ltseg.evaluate gt=PATH results=PATH iou_types=[bbox,segm] train_stats=PATH output=DIR``

Hydra-style ``key=value`` overrides of ``conf/evaluate.yaml``. Start-up time is part of what
users wait for, so this entry point imports neither torch nor Hydra unless ``checkpoint=``
asks for inference.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ltseg.utils.paths import CONF_DIR

CONFIG = CONF_DIR / "evaluate.yaml"


def load_config(argv: list[str], config: Path = CONFIG) -> dict:
    """Defaults from ``conf/evaluate.yaml`` with ``key=value`` overrides (values parsed as YAML)."""
    import yaml

    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config}")
    cfg = yaml.safe_load(config.read_text()) or {}
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if key.startswith("hydra."):
            continue
        if not sep or key not in cfg:
            raise KeyError(f"unknown override {arg!r}; keys: {', '.join(sorted(cfg))} "
                           f"(form key=value, see {config.name})")
        cfg[key] = yaml.safe_load(value) if value else None
    return cfg


def run(cfg: dict) -> dict:
    """Evaluate per the config; prints the LVIS table and returns ``{iou_type: {metric: value}}``."""
    from ltseg.evaluation import evaluate_results, format_table

    if not cfg.get("gt"):
        raise ValueError("gt=PATH is required (the LVIS-format ground-truth JSON)")
    results = cfg.get("results")
    if cfg.get("checkpoint"):
        if results:
            raise ValueError("give either results= or checkpoint=, not both")
        try:
            from ltseg.engine.inference import predict_checkpoint
        except ImportError as e:
            raise RuntimeError("checkpoint= needs ltseg.engine.inference.predict_checkpoint, which "
                               f"could not be imported ({e}); pass results=PATH instead") from e
        results = predict_checkpoint(cfg["checkpoint"], list(cfg.get("overrides") or []))
        if int(os.environ.get("RANK", "0")) != 0:     # under torchrun only rank 0 evaluates
            return {}
    if not results:
        raise ValueError("results=PATH (or checkpoint=PATH) is required")
    iou_types = cfg.get("iou_types") or ["bbox", "segm"]
    metrics = evaluate_results(
        cfg["gt"], results, iou_types=[iou_types] if isinstance(iou_types, str) else iou_types,
        train_stats=cfg.get("train_stats"), bins=cfg.get("bins", "lvis"),
        output_dir=cfg.get("output"), backend=cfg.get("backend", "native"),
        mask_backend=cfg.get("mask_backend", "auto"),
        max_dets=int(cfg.get("max_dets", 300)), workers=cfg.get("workers"),
        plots=bool(cfg.get("plots", False)))
    print(format_table(metrics))
    if cfg.get("output"):
        print(f"wrote {Path(cfg['output']) / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + f"\n\nkeys and defaults: {CONFIG}")
        return 0
    try:
        run(load_config(argv))
    except (ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ltseg.evaluate: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
