"""The paper-table recipes: every conf/experiment/*.yaml and every command a `make repro-*` target
runs composes through Hydra to the setting docs/reproducing.md states (one table here is the source
of truth; the docs' "Settings at a glance" table is checked against it), and a missing DATA /
WEIGHTS / WEIGHTS_R101 stops make with one clear message. CPU only, no training."""
import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DOC = ROOT / "docs" / "reproducing.md"
MAKE_VARS = ["DATA=/data", "WEIGHTS=/w/r50.pth", "WEIGHTS_R101=/w/r101.pth", "OUT=/runs", "SEED=3"]
TARGETS = ["repro-eql", "repro-droploss", "repro-seesaw", "repro-simcal", "repro-fbs-aegl"]
ANNOTATED_TRAIN_IMAGES = {"lvis_v0.5": 56740, "lvis_v1": 99388}  # training images with >= 1 annotation

# experiment -> setting. epochs: (total, decay epochs) converted over ANNOTATED_TRAIN_IMAGES.
MRCNN, CASCADE = "ltseg.modeling.roi_heads.StandardROIHeads", "ltseg.modeling.cascade.CascadeROIHeads"
D2 = dict(model=MRCNN, sampler="random", t=None, max_iter=90000, batch=16, lr=0.02, steps=[60000, 80000],
          warmup=(1000, 0.001), score=0.0, clip=None, amp="off", min_size=[640, 672, 704, 736, 768, 800],
          box_agnostic=False, mask_agnostic=False, beta=(1 / 9, 1 / 9), pooler=(0, True), rpn_post=1000,
          epochs=None)
MMDET2 = dict(D2, score=0.0001, beta=(0.0, 0.0), warmup=(500, 0.001))
SIMCAL = dict(D2, max_iter=42555, steps=[28370, 39009], warmup=(500, 1 / 3), clip=35.0, min_size=[800],
              beta=(1 / 9, 1.0), pooler=(2, False), rpn_post=2000, epochs=(12, [8, 11]), data="lvis_v0.5")
SETTINGS = {
    "lvis_v1_r50_1x": dict(D2, data="lvis_v1", sampler="rfs", t=0.001, amp="bf16"),
    "lvis_v1_cascade_r50_1x": dict(D2, data="lvis_v1", sampler="rfs", t=0.001, amp="bf16", model=CASCADE),
    "eql_lvis_v0.5": dict(D2, data="lvis_v0.5", max_iter=44328, batch=32, lr=0.04, steps=[28370, 39009],
                          min_size=[800], mask_agnostic=True, epochs=(25, [16, 22])),
    "droploss_lvis_v0.5": dict(D2, data="lvis_v0.5"),
    "droploss_lvis_v0.5_rfs": dict(D2, data="lvis_v0.5", sampler="rfs", t=0.0005),
    "droploss_lvis_v1": dict(D2, data="lvis_v1"),
    "droploss_lvis_v1_rfs": dict(D2, data="lvis_v1", sampler="rfs", t=0.0005),
    "seesaw_lvis_v1": dict(MMDET2, data="lvis_v1", max_iter=74541, steps=[49694, 68329], epochs=(12, [8, 11])),
    "simcal_lvis_v0.5_r50_ag": dict(SIMCAL, box_agnostic=True, mask_agnostic=True),
    "simcal_lvis_v0.5_r50": dict(SIMCAL),
    "fbs_aegl_lvis_v0.5": dict(MMDET2, data="lvis_v0.5", sampler="rfs", t=0.001, max_iter=85110,
                               steps=[56740, 78018], epochs=(24, [16, 22])),
    "fbs_aegl_lvis_v1": dict(MMDET2, data="lvis_v1", sampler="rfs", t=0.001, max_iter=149082,
                             steps=[99388, 136659], epochs=(24, [16, 22])),
}
SAMPLERS = {"random": "ltseg.data.samplers.TrainingSampler", "rfs": "ltseg.data.samplers.RepeatFactorSampler"}
BACKBONES = {"mask_r50": (MRCNN, 50), "mask_r101": (MRCNN, 101), "cascade_r50": (CASCADE, 50),
             "cascade_r101": (CASCADE, 101)}
LOSSES = {"bce": "SigmoidBCE", "ce": "SoftmaxCE", "eql": "EqualizationLoss", "droploss": "DropLoss",
          "beql": "BackgroundEQL", "seesaw": "SeesawLoss", "fbs_aegl": "FBSAEGL"}
EQL_PAPER = ("eql", {"image_level_rule": True, "lambda_": None})  # EQL paper §4.2; tail = rare + common
EQL_CODE = ("eql", {"image_level_rule": False, "lambda_": None})

# run folder (under OUT, before _seed<SEED>) -> (target, experiment, backbone, (loss, loss keys))
ROWS = {
    **{f"eql/t1_{arch}_{name}": ("repro-eql", "eql_lvis_v0.5", arch, loss)
       for arch in BACKBONES for name, loss in (("bce", ("bce", {})), ("eql", EQL_PAPER))},
    **{f"droploss/t1_{arch}_{name}": ("repro-droploss", "droploss_lvis_v0.5", arch, loss)
       for arch in BACKBONES
       for name, loss in (("bce", ("bce", {})), ("eql", EQL_CODE), ("droploss", ("droploss", {"variant": "code"})))},
    "droploss/t2_v0.5_ce": ("repro-droploss", "droploss_lvis_v0.5", "mask_r50", ("ce", {})),
    **{f"droploss/t2_{split}_{name}": ("repro-droploss", f"droploss_lvis_{split}", "mask_r50", loss)
       for split in ("v0.5_rfs", "v1", "v1_rfs")
       for name, loss in (("bce", ("bce", {})), ("ce", ("ce", {})), ("eql", EQL_CODE),
                          ("droploss", ("droploss", {"variant": "code"})))
       if not (name == "ce" and split != "v0.5_rfs")},
    "droploss/t3_beql_b4": ("repro-droploss", "droploss_lvis_v0.5", "mask_r50", ("beql", {"log_base": 4.0})),
    "droploss/t3_beql_b5": ("repro-droploss", "droploss_lvis_v0.5", "mask_r50", ("beql", {"log_base": 5.0})),
    "seesaw/t1_ce": ("repro-seesaw", "seesaw_lvis_v1", "mask_r50", ("ce", {})),
    "seesaw/t1_eql": ("repro-seesaw", "seesaw_lvis_v1", "mask_r50", EQL_CODE),
    "seesaw/t1_seesaw": ("repro-seesaw", "seesaw_lvis_v1", "mask_r50",
                         ("seesaw", {"p": 0.8, "q": 0.0, "temperature": 20.0})),
    "simcal/t3_r50_ag": ("repro-simcal", "simcal_lvis_v0.5_r50_ag", "mask_r50", ("ce", {})),
    "simcal/t3_r50": ("repro-simcal", "simcal_lvis_v0.5_r50", "mask_r50", ("ce", {})),
    "fbs_aegl/t7_v0.5_r50": ("repro-fbs-aegl", "fbs_aegl_lvis_v0.5", "mask_r50",
                             ("fbs_aegl", {"gamma": 0.7, "mu": 0.7, "variant": "eq10"})),
    "fbs_aegl/t7_v1_r50": ("repro-fbs-aegl", "fbs_aegl_lvis_v1", "mask_r50",
                           ("fbs_aegl", {"gamma": 0.7, "mu": 0.7, "variant": "eq10"})),
    "fbs_aegl/t7_v1_r101": ("repro-fbs-aegl", "fbs_aegl_lvis_v1", "mask_r101",
                            ("fbs_aegl", {"gamma": 0.7, "mu": 0.7, "variant": "eq10"})),
    "fbs_aegl/t5_v1_r50_bce": ("repro-fbs-aegl", "fbs_aegl_lvis_v1", "mask_r50", ("bce", {})),
    "fbs_aegl/t5_v1_r101_bce": ("repro-fbs-aegl", "fbs_aegl_lvis_v1", "mask_r101", ("bce", {})),
}


def make(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "WEIGHTS", "WEIGHTS_R101", "OUT", "SEED",
                                                             "GPUS", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          env={**env, **(env_extra or {})}, timeout=60)


def commands(target: str, *extra: str) -> list[list[str]]:
    res = make("-n", target, *MAKE_VARS, *extra)
    assert res.returncode == 0, res.stderr
    return [shlex.split(line) for line in res.stdout.splitlines() if "-m ltseg." in line]


def overrides_after(argv: list[str], module: str) -> list[str]:
    return argv[argv.index(module) + 1:]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def launched() -> dict[str, tuple[str, list[str]]]:
    """run folder -> (target, full argv) for every training command of every repro target."""
    runs = {}
    for target in TARGETS:
        for argv in commands(target):
            if "ltseg.train" in argv:
                run_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir="))
                name = re.fullmatch(r"/runs/(.+)_seed3", run_dir).group(1)
                assert name not in runs, f"two rows write to {run_dir}"
                runs[name] = (target, argv)
    return runs


def check_setting(cfg, s: dict) -> None:
    assert cfg.data.name == s["data"] and cfg.device == "cuda"
    assert cfg.model.roi_heads._target_ == s["model"]
    assert cfg.sampler._target_ == SAMPLERS[s["sampler"]]
    if s["t"] is not None:
        assert cfg.sampler.repeat_thresh == s["t"] and cfg.sampler.sqrt is True
    sch = cfg.schedule
    batch = sch.images_per_batch or cfg.data.images_per_batch  # what ltseg/train.py uses
    assert (sch.max_iter, batch, sch.base_lr, list(sch.steps)) == (s["max_iter"], s["batch"], s["lr"], s["steps"])
    assert (sch.warmup_iters, sch.warmup_factor, sch.gamma) == (*s["warmup"], 0.1)
    assert (sch.momentum, sch.weight_decay) == (0.9, 1e-4)
    rh = cfg.model.roi_heads
    assert rh.test.score_thresh == s["score"] and rh.test.max_dets == 300 and cfg.eval.max_dets == 300
    assert rh.test.nms_thresh == 0.5 and list(cfg.eval.iou_types) == ["bbox", "segm"]
    assert cfg.trainer.clip_grad_norm == s["clip"] and cfg.trainer.amp == s["amp"]
    assert list(cfg.data.min_size_train) == s["min_size"] and cfg.data.max_size_train == 1333
    assert (cfg.data.min_size_test, cfg.data.max_size_test, cfg.data.flip_prob) == (800, 1333, 0.5)
    assert rh.mask_head.class_agnostic is s["mask_agnostic"]
    assert rh.box_head.class_agnostic is (s["box_agnostic"] or s["model"] == CASCADE)
    assert (cfg.model.rpn.smooth_l1_beta, rh.smooth_l1_beta) == pytest.approx(s["beta"], rel=1e-12)
    assert (rh.pooler.sampling_ratio, rh.pooler.aligned) == s["pooler"]
    assert cfg.model.rpn.post_nms_topk_train == s["rpn_post"]
    if s["epochs"]:
        total, decays = s["epochs"]
        per_epoch = ANNOTATED_TRAIN_IMAGES[s["data"]] / batch
        assert sch.max_iter == math.floor(total * per_epoch + 0.5)
        assert list(sch.steps) == [math.floor(e * per_epoch + 0.5) for e in decays]


def test_every_experiment_yaml_is_in_the_table_and_composes():
    names = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert names == sorted(SETTINGS)
    for name in names:
        cfg = compose_train([f"+experiment={name}"])
        check_setting(cfg, SETTINGS[name])
        assert cfg.model.backbone.weights is None and cfg.model.backbone.norm == "FrozenBN"


def test_every_row_is_launched_once_by_its_target(launched):
    assert sorted(launched) == sorted(ROWS)
    assert all(launched[name][0] == target for name, (target, *_) in ROWS.items())


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_composes_to_the_documented_setting(launched, name):
    target, experiment, arch, (loss, loss_keys) = ROWS[name]
    argv = launched[name][1]
    assert argv[0].endswith("torchrun") and "--nproc_per_node=8" in argv
    overrides = overrides_after(argv, "ltseg.train")
    assert overrides[0] == f"+experiment={experiment}"
    cfg = compose_train(overrides)
    check_setting(cfg, {**SETTINGS[experiment], "model": BACKBONES[arch][0]})
    assert (cfg.model.roi_heads._target_, cfg.model.backbone.depth) == BACKBONES[arch]
    assert cfg.model.backbone.weights == ("/w/r101.pth" if arch.endswith("101") else "/w/r50.pth")
    assert cfg.loss._target_ == f"ltseg.losses.{LOSSES[loss]}"
    for key, value in loss_keys.items():
        assert cfg.loss[key] == value, (name, key)
    default = OmegaConf.load(CONF / "data" / f"{cfg.data.name}.yaml")
    for split in ("train", "val"):
        assert cfg.data[split].ann_file == f"/data/lvis/{Path(default[split].ann_file).name}"
        root = "/data/coco" + ("" if cfg.data.name == "lvis_v1" else f"/{split}2017")
        assert cfg.data[split].image_root == root
    assert (cfg.seed, cfg.resume) == (3, "auto")
    assert cfg.hydra.run.dir == f"/runs/{name}_seed3"


def test_simcal_calibrates_each_trained_model_with_the_paper_settings():
    cmds = commands("repro-simcal")
    trained = [next(a for a in c if a.startswith("hydra.run.dir=")).split("=", 1)[1] for c in cmds
               if "ltseg.train" in c]
    calib = [overrides_after(c, "ltseg.calibrate") for c in cmds if "ltseg.calibrate" in c]
    assert [c[0] for c in calib] == [f"checkpoint={d}/model_final.pt" for d in trained]
    assert cmds.index(next(c for c in cmds if "ltseg.calibrate" in c)) == len(trained)  # trains first
    for overrides in calib:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("calibration/_main", overrides=overrides)
        cal = cfg.calibration
        assert (cal.name, cal.head, cal.loss) == ("simcal", "3fc_ft", "ce")
        assert (cal.classes_per_step, cal.images_per_class, cal.steps_per_epoch, cal.epochs) == (16, 1, 1000, 12)
        assert cal.dual_head.combine == "select" and cal.dual_head.rule == "paper" and cal.dual_head.threshold is None
        assert cfg.evaluate is True and cfg.seed == 3


def test_gpus_and_out_are_passed_through():
    argv = commands("repro-seesaw", "GPUS=4", "OUT=/elsewhere")[0]
    assert "--nproc_per_node=4" in argv and "hydra.run.dir=/elsewhere/seesaw/t1_ce_seed3" in argv


@pytest.mark.parametrize("target, missing, message", [
    ("repro-seesaw", "DATA", "DATA is not set"),
    ("repro-simcal", "WEIGHTS", "WEIGHTS is not set"),
    ("repro-eql", "WEIGHTS_R101", "WEIGHTS_R101 is not set"),
    ("repro-droploss", "DATA", "DATA is not set"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_variable_stops_before_any_command(target, missing, message, dry_run):
    given = [v for v in MAKE_VARS if not v.startswith(f"{missing}=")]
    res = make(*(["-n"] if dry_run else []), target, *given, "TORCHRUN=false", "PY=false")
    assert res.returncode != 0 and message in res.stderr
    assert "ltseg" not in res.stdout


def test_every_r50_only_target_runs_without_r101_weights():
    for target in ("repro-seesaw", "repro-simcal", "repro-droploss-table2", "repro-droploss-table3"):
        res = make("-n", target, *[v for v in MAKE_VARS if not v.startswith("WEIGHTS_R101=")])
        assert res.returncode == 0 and "r101" not in res.stdout, target


def test_repro_list_prints_every_command_without_running():
    res = make("repro-list")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if "-m ltseg." in line]
    assert len(lines) == len(ROWS) + 2 and all("<DATA>/lvis/" in line for line in lines if "ltseg.train" in line)


def number(cell: str) -> float:
    return float(cell.replace(",", "").strip())


def test_docs_state_the_same_settings_and_name_every_row():
    text = DOC.read_text()
    section = text.split("## Settings at a glance", 1)[1].split("\n## ", 1)[0]
    table = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
             for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for name, data, sampler, t, iters, batch, lr, steps, warmup, score, *_ in table:
        documented[name] = (data, sampler, None if t == "–" else number(t), number(iters), number(batch), number(lr),
                            [number(x) for x in steps.split("/")], number(warmup.split("×")[0]), number(score))
    assert sorted(documented) == sorted(SETTINGS)
    for name, s in SETTINGS.items():
        assert documented[name] == (s["data"], s["sampler"], s["t"], s["max_iter"], s["batch"], s["lr"], s["steps"],
                                    s["warmup"][0], s["score"]), name
    for name in ROWS:
        assert f"`{name}`" in text, f"docs/reproducing.md does not name the row {name}"
    for target in TARGETS:
        assert f"make {target}" in text
