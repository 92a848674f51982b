"""End-to-end runs of ``ltseg.train`` on a small synthetic dataset (CPU): a 30-iteration run whose
loss decreases and whose results JSON loads in the official lvis API; exact resume of the real
model; config composition (loss sweeps, SLURM launcher); torchrun and multirun smokes (slow)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ltseg.engine import distributed as du
from ltseg.engine.inference import predict_checkpoint
from ltseg.train import run, short_dirname

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.generator.num_categories=12", "data.generator.train_images=120", "data.generator.val_images=16",
    "data.generator.min_val_images=2", "data.generator.image_size=128", "data.generator.workers=1",
    "data.min_size_train=[128]", "data.max_size_train=128", "data.min_size_test=128", "data.max_size_test=128",
    "data.num_workers=0", "data.test_images_per_batch=4", "model.roi_heads.test.max_dets=100",
    "schedule.images_per_batch=2", "schedule.warmup_iters=5", "schedule.steps=[100]", "schedule.base_lr=0.01",
    "trainer.progress=false",
]


def make_cfg(*overrides: str, return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_thirty_iteration_run_loss_decreases_and_results_load_in_lvis_api(tmp_path):
    from tests.lvis_oracle import LVIS, LVISResults

    out = tmp_path / "run"
    cfg = make_cfg(*SMALL, "schedule.max_iter=30", "trainer.log_period=5", f"trainer.output_dir={out}")
    metrics = run(cfg)

    train_rows = [r for r in rows(out) if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert train_rows[-1]["total_loss"] < 0.75 * train_rows[0]["total_loss"], train_rows
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "lr", "img_per_s"} <= set(train_rows[0])

    for iou_type in ("bbox", "segm"):
        assert {"AP", "AP50", "APr", "APc", "APf", "AP1", "AP4"} <= set(metrics[iou_type])
    assert metrics["bbox"]["AR@300"] > 0  # it found something after 30 iterations
    final = out / "inference" / "iter_0000030"
    assert json.loads((final / "metrics.json").read_text())
    assert [r["iteration"] for r in rows(out) if "eval" in r] == [30]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "val/predictions" in events.Tags()["images"]
    assert {"train/loss_cls", "train/lr", "train/img_per_s", "eval_bbox/APr", "eval_segm/AP1"} <= set(events.Tags()["scalars"])

    gt = LVIS(cfg.data.val.ann_file)
    results_path = final / "results.json"
    dets = LVISResults(gt, str(results_path), max_dets=300)
    assert len(dets.anns) > 0 and set(dets.get_cat_ids()) <= set(gt.get_cat_ids())
    assert all(len(dets.get_ann_ids(img_ids=[i])) <= 100 for i in gt.get_img_ids())

    ckpt = torch.load(out / "model_final.pt", weights_only=True)
    assert ckpt["iteration"] == 30 and ckpt["stats"]["num_images"] == 120
    assert "_target_: ltseg.losses.SoftmaxCE" in (out / "config.yaml").read_text()

    # re-running inference from the checkpoint gives the same results file
    again = predict_checkpoint(out / "model_final.pt")
    assert json.loads(again.read_text()) == json.loads(results_path.read_text())


def test_real_model_resume_is_bitwise_identical(tmp_path):
    common = [*SMALL, "eval.enabled=false", "deterministic=true", "trainer.tensorboard=false"]
    run(make_cfg(*common, "schedule.max_iter=4", f"trainer.output_dir={tmp_path / 'full'}"))
    run(make_cfg(*common, "schedule.max_iter=2", f"trainer.output_dir={tmp_path / 'split'}"))
    run(make_cfg(*common, "schedule.max_iter=4", "resume=true", f"trainer.output_dir={tmp_path / 'split'}"))
    a = torch.load(tmp_path / "full" / "model_final.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "model_final.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("optimizer", "scheduler"):
        assert str(a[k]) == str(b[k])


@pytest.mark.parametrize("loss, target", [("ce", "ltseg.losses.SoftmaxCE"), ("bce", "ltseg.losses.SigmoidBCE")])
def test_loss_sweep_composes(loss, target):
    cfg = make_cfg(f"loss={loss}", "sampler=rfs", "schedule=1x")
    assert cfg.loss._target_ == target
    assert cfg.schedule.max_iter == 90000 and cfg.schedule.images_per_batch == 16
    assert cfg.eval.bins == cfg.data.bins and cfg.trainer.amp == "off"


def test_short_dirname():
    assert short_dirname("loss=ce,trainer.output_dir=/a/b") == "loss=ce,trainer.output_dir=_a_b"
    long = ",".join(f"key{i}=value{i}" for i in range(30))
    name = short_dirname(long)
    assert len(name) == 80 and name != short_dirname(long + "x") and name.startswith("key0=value0")


@pytest.mark.parametrize("name, model", [("lvis_v1_r50_1x", 50), ("lvis_v1_cascade_r50_1x", 50)])
def test_experiment_configs_compose(name, model):
    cfg = make_cfg(f"+experiment={name}", "loss=seesaw")
    assert cfg.model.backbone.depth == model and cfg.schedule.max_iter == 90000
    assert cfg.data.name.startswith("lvis") and cfg.trainer.amp == "bf16" and cfg.device == "cuda"
    assert cfg.sampler._target_.endswith("RepeatFactorSampler") and cfg.loss._target_.endswith("SeesawLoss")


def test_default_config_is_the_cpu_demo():
    cfg = make_cfg(return_hydra_config=True)
    assert cfg.data.name == "lvis-synth" and cfg.schedule.max_iter == 600
    assert cfg.seed == 0 and cfg.deterministic is False and cfg.resume is False and cfg.device == "auto"
    assert cfg.hydra.run.dir.startswith("outputs/") and not cfg.hydra.job.chdir


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'ltseg[slurm]'")
    cfg = make_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (8, 8, "gpu")
    assert launcher.max_num_timeout == 3


def test_batch_not_divisible_by_world_size_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(du, "init_distributed", lambda *a, **k: du.DistInfo(rank=0, world_size=3))
    with pytest.raises(ValueError, match="images_per_batch=2 is not divisible by 3 processes"):
        run(make_cfg(*SMALL, f"trainer.output_dir={tmp_path}"))


def test_unwritable_output_dir_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="is not writable"):
        run(make_cfg(*SMALL, f"trainer.output_dir={tmp_path / 'file' / 'run'}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "ltseg.train", *SMALL, "schedule.max_iter=4", "device=cpu", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 process(es)" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "inference" / "iter_0000004" / "metrics.json").exists()
    assert not list((tmp_path / "inference" / "iter_0000004").glob("results_rank*.json"))


@pytest.mark.slow
def test_basic_launcher_multirun_over_losses(tmp_path):
    cmd = [sys.executable, "-m", "ltseg.train", "-m", "loss=ce,bce", *SMALL, "schedule.max_iter=2",
           "eval.enabled=false", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2 and runs[0].startswith("0_") and runs[1].startswith("1_")
    assert all(len(r) <= 82 for r in runs)
    assert "loss: bce" in (tmp_path / runs[1] / ".hydra" / "overrides.yaml").read_text().replace("=", ": ")
    for r in runs:
        assert (tmp_path / r / "model_final.pt").exists() and (tmp_path / r / ".hydra" / "config.yaml").exists()


def _background_batch(mixed: bool):
    from hydra.utils import instantiate

    from ltseg.data.build import build_dataset
    from ltseg.data.collate import collate
    from ltseg.modeling import build_model

    cfg = make_cfg(*SMALL)
    ds = build_dataset(cfg.data, "train")
    sample = ds[1]
    keep_none = torch.zeros(len(sample["labels"]), dtype=torch.bool)
    sample = {**sample, "boxes": sample["boxes"][:0], "labels": sample["labels"][:0],
              "masks": sample["masks"][keep_none]}
    batch = collate([ds[0], sample] if mixed else [sample], 32)
    torch.manual_seed(0)
    model = build_model(cfg.model, instantiate(cfg.loss), ds.stats).train()
    return model, batch


def test_image_without_annotations_trains_as_background():
    """An image whose annotations were all filtered out is used as a background-only image."""
    model, batch = _background_batch(mixed=True)
    losses = model(batch.images, batch.image_sizes, batch.targets)
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_batch_of_background_only_images_trains():
    model, batch = _background_batch(mixed=False)
    losses = model(batch.images, batch.image_sizes, batch.targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] == 0 and losses["loss_mask"] == 0


def test_console_script_finds_the_configs_from_any_folder(tmp_path):
    """``ltseg-train`` imports ltseg.train as a module (not __main__): the config path must not
    depend on how it was started or on the working directory."""
    code = "import sys; from ltseg.train import main; sys.argv = ['ltseg-train', '--cfg', 'job', 'loss=bce']; main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "_target_: ltseg.losses.SigmoidBCE" in proc.stdout
