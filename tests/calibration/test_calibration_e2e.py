"""End to end on the built-in synthetic dataset: checkpoint -> `ltseg.calibrate` -> orig/cal/dual metrics."""
import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ltseg.calibrate import CALIBRATED_NAME, run
from ltseg.calibration.loop import freeze, train_heads
from ltseg.calibration.simcal import SimCal, build_calibration_loss
from ltseg.data.build import build_dataset
from ltseg.data.category_stats import CategoryStats
from ltseg.engine.checkpoint import CheckpointError
from ltseg.modeling import build_model

CONF = Path(__file__).resolve().parents[2] / "conf"
MODEL = "tiny_cascade"
STEPS = ["calibration.steps_per_epoch=2", "calibration.epochs=2", "calibration.lr_decay_epochs=[2]",
         "calibration.classes_per_step=3", "calibration.dual_head.threshold=3", "device=cpu"]


def train_config(root: Path, model: str = "tiny_cascade"):
    data = OmegaConf.load(CONF / "data" / "synthetic.yaml")
    g = data.generator
    g.root, g.num_categories, g.train_images, g.val_images = str(root / "synth"), 8, 16, 6
    g.image_size, g.max_image_count, g.min_val_images, g.max_objects, g.workers = 96, 8, 1, 4, 1
    data.min_size_train, data.max_size_train, data.min_size_test, data.max_size_test = [96], 160, 96, 160
    data.num_workers, data.test_images_per_batch = 0, 3
    m = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    m.roi_heads.test.max_dets, m.rpn.post_nms_topk_test = 50, 100
    cfg = OmegaConf.create({"model": m, "data": data, "loss": OmegaConf.load(CONF / "loss" / "ce.yaml"),
                            "eval": {"iou_types": ["bbox", "segm"]}})
    OmegaConf.resolve(cfg)
    return cfg


def save_checkpoint(path: Path, cfg, model_cfg=None, stats=None, seed=0) -> Path:
    """An engine-format checkpoint of an (untrained, seeded) model built from ``model_cfg``."""
    stats = stats or build_dataset(cfg.data, "train").stats
    torch.manual_seed(seed)
    model = build_model(model_cfg or cfg.model, instantiate(cfg.loss), stats)
    torch.save({"model": model.state_dict(), "iteration": 7, "config_yaml": OmegaConf.to_yaml(cfg)}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("simcal")
    cfg = train_config(root)
    return root, cfg, save_checkpoint(root / "model_final.pt", cfg)


def calibrate_cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("calibration/_main", overrides=list(overrides))


def test_calibrate_end_to_end_and_evaluate_only(setup):
    root, _, ckpt = setup
    out = run(calibrate_cfg(f"checkpoint={ckpt}", "calibration=simcal", f"output_dir={root / 'cal'}", *STEPS))
    assert out["checkpoint"] == root / "cal" / CALIBRATED_NAME and out["train"]["steps"] == 4
    saved = torch.load(out["checkpoint"], weights_only=True)
    original = torch.load(ckpt, weights_only=True)
    assert saved["model"].keys() == original["model"].keys()
    assert all(torch.equal(saved["model"][k], original["model"][k]) for k in original["model"])
    assert saved["simcal"]["config"]["head"] == "3fc_ft" and saved["iteration"] == 7
    assert {k.split(".")[1] for k in saved["simcal"]["state"] if k.startswith("heads.")} == {"0", "1", "2"}
    metrics = out["metrics"]
    assert set(metrics) == {"bbox", "segm"} and all(set(m) == {"orig", "cal", "dual"} for m in metrics.values())
    table = (root / "cal" / "simcal_table.txt").read_text()
    assert table.splitlines()[0].split() == ["bbox", "orig", "cal", "dual"]
    assert (root / "cal" / "dual" / "metrics.json").is_file() and (root / "cal" / "orig" / "per_category_segm.csv").is_file()
    # a calibrated checkpoint is evaluated without training, with the same numbers
    again = run(calibrate_cfg(f"checkpoint={out['checkpoint']}", f"output_dir={root / 'again'}", *STEPS))
    assert again["train"] is None and again["metrics"] == metrics
    # the stored heads must match the requested head type
    with pytest.raises(CheckpointError, match=r"calibrated with calibration.head='3fc_ft' but the config says '2fc_rand'"):
        run(calibrate_cfg(f"checkpoint={out['checkpoint']}", "calibration.head=2fc_rand", *STEPS))


def frozen_trained_model(cfg, ckpt):
    """The training set and the trained model of ``ckpt``, frozen as calibration starts."""
    train_set = build_dataset(cfg.data, "train")
    model = build_model(cfg.model, instantiate(cfg.loss), train_set.stats)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    freeze(model)
    return train_set, model


def test_only_the_calibrated_heads_change(setup):
    _, cfg, ckpt = setup
    train_set, model = frozen_trained_model(cfg, ckpt)
    before = copy.deepcopy(model.state_dict())
    simcal = SimCal(model, train_set.stats, "3fc_ft", build_calibration_loss("ce"), [0, 1, 2], 64, {"threshold": 3})
    heads_before = copy.deepcopy(simcal.state_dict())
    cal = calibrate_cfg(*STEPS).calibration
    info = train_heads(simcal, model, train_set, cal, torch.device("cpu"), torch.Generator().manual_seed(0), 0)
    assert info["steps"] == 4 and info["empty_steps"] < 4
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    moved = [k for k in heads_before if not torch.equal(heads_before[k], simcal.state_dict()[k])]
    assert any(k.startswith("heads.0.classifier") for k in moved)
    assert any(k.startswith("heads.2.trunk") for k in moved)


def test_checkpoint_class_count_differs_from_config(setup):
    root, cfg, _ = setup
    ten = CategoryStats.from_counts([1] * 10, [1] * 10, 16)
    bad = save_checkpoint(root / "ten_classes.pt", cfg, stats=ten)
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatch.*the config describes 8 classes"):
        run(calibrate_cfg(f"checkpoint={bad}", *STEPS))


def test_checkpoint_head_type_differs_from_config(setup):
    root, cfg, _ = setup
    standard = save_checkpoint(root / "standard.pt", cfg, model_cfg=train_config(root, "tiny").model)
    with pytest.raises(CheckpointError, match=r"(?s)missing in checkpoint.*roi_heads ltseg.modeling.cascade.CascadeROIHeads"):
        run(calibrate_cfg(f"checkpoint={standard}", *STEPS))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run(calibrate_cfg(f"checkpoint={tmp_path / 'nope.pt'}", *STEPS))


@pytest.mark.slow
def test_train_then_calibrate_tiny_cascade(tmp_path):
    """`ltseg.train model=tiny_cascade` for 60 iterations, then `ltseg.calibrate` on its checkpoint:
    the `orig` column reproduces the trainer's own final evaluation."""
    import json

    from ltseg.train import run as train_run

    data = train_config(tmp_path).data
    overrides = [f"model={MODEL}", "schedule.max_iter=60", "schedule.warmup_iters=30", "schedule.base_lr=0.005", "schedule.steps=[50]",
                 f"trainer.output_dir={tmp_path / 'train'}", "trainer.tensorboard=false", "trainer.progress=false",
                 "device=cpu", "eval.num_vis_images=0"]
    overrides += [f"data.generator.{k}={v}" for k, v in data.generator.items() if k != "_target_"]
    overrides += [f"data.{k}={v}" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test",
                                            "num_workers", "test_images_per_batch")
                  for v in [data[k]]]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train_run(cfg)
    trained = json.loads(next((tmp_path / "train" / "inference").glob("iter_*/metrics.json")).read_text())
    out = run(calibrate_cfg(f"checkpoint={tmp_path / 'train' / 'model_final.pt'}", *STEPS))
    for iou_type in ("bbox", "segm"):
        assert out["metrics"][iou_type]["orig"]["AP"] == pytest.approx(trained[iou_type]["AP"], abs=1e-12)
    saved = torch.load(out["checkpoint"], weights_only=True)
    final = torch.load(tmp_path / "train" / "model_final.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], final["model"][k]) for k in final["model"])


def test_calibration_does_not_depend_on_loader_workers(setup):
    _, cfg, ckpt = setup
    train_set, model = frozen_trained_model(cfg, ckpt)
    cal = calibrate_cfg(*STEPS).calibration
    start, trained = None, []
    for workers in (0, 1):
        simcal = SimCal(model, train_set.stats, "2fc_rand", build_calibration_loss("ce"), [2], 32, {"threshold": 3})
        if start is None:
            start = copy.deepcopy(simcal.state_dict())
        simcal.load_state_dict(start)
        train_heads(simcal, model, train_set, cal, torch.device("cpu"), torch.Generator().manual_seed(1), 0,
                    num_workers=workers)
        trained.append(simcal.state_dict())
    assert any(not torch.equal(start[k], trained[0][k]) for k in start)
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in start)
