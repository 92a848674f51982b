"""``python -m ltseg.evaluate``: outputs, keys, exactness against the official API, errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ltseg.evaluate import load_config, main
from ltseg.evaluation.cases import make_case
from tests.evaluation.eval_helpers import dump
from tests.lvis_oracle import official_eval

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
        "AR@300", "ARs@300", "ARm@300", "ARl@300", "AP1", "AP2", "AP3", "AP4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    gt, res = make_case(31, num_images=10, size=(200, 240))
    train = {"categories": [{"id": c["id"], "instance_count": 3 * c["id"] ** 2} for c in gt["categories"]]}
    return d, gt, res, dump(d / "gt.json", gt), dump(d / "res.json", res), dump(d / "train.json", train)


def test_cli_writes_metrics_csv_and_table(files):
    d, gt, res, gt_path, res_path, train = files
    out = d / "out"
    proc = subprocess.run([sys.executable, "-m", "ltseg.evaluate", f"gt={gt_path}", f"results={res_path}",
                           "iou_types=[bbox,segm]", f"train_stats={train}", f"output={out}", "plots=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Average Precision" in proc.stdout and "Instance-count bins" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["bbox", "segm"]
    for t in ("bbox", "segm"):
        assert list(metrics[t]) == KEYS
        ref = official_eval(gt, res, t).results
        for k, v in ref.items():
            assert abs(metrics[t][k] - float(v)) <= 1e-12, (t, k)
        rows = list(csv.DictReader(open(out / f"per_category_{t}.csv")))
        assert list(rows[0]) == ["id", "name", "frequency", "train_image_count", "train_instance_count",
                                 "AP", "AP50", "AP75", "AR"]
        assert [int(r["id"]) for r in rows] == sorted(c["id"] for c in gt["categories"])
        assert (out / f"per_category_ap_{t}.png").stat().st_size > 1000
    assert (out / "bins_ap.png").stat().st_size > 1000


def test_cli_official_backend_and_bins_preset(files, capsys):
    d, gt, res, gt_path, res_path, train = files
    native, official = d / "native", d / "official"
    assert main([f"gt={gt_path}", f"results={res_path}", "iou_types=bbox", f"train_stats={train}",
                 "bins=coco_lt", f"output={native}", "workers=1"]) == 0
    assert main([f"gt={gt_path}", f"results={res_path}", "iou_types=[bbox]", f"train_stats={train}",
                 "bins=coco_lt", f"output={official}", "backend=official"]) == 0
    a = json.loads((native / "metrics.json").read_text())
    b = json.loads((official / "metrics.json").read_text())
    assert list(a) == ["bbox"] and a == b


def test_cli_mask_backends_agree(files, capsys):
    d, gt, res, gt_path, res_path, train = files
    for b in ("native", "pycocotools"):
        assert main([f"gt={gt_path}", f"results={res_path}", "iou_types=segm", f"output={d / b}",
                     f"mask_backend={b}"]) == 0
    assert json.loads((d / "native" / "metrics.json").read_text()) == \
        json.loads((d / "pycocotools" / "metrics.json").read_text())
    assert main([f"gt={gt_path}", f"results={res_path}", "mask_backend=cuda"]) == 2
    assert "mask backend 'cuda'" in capsys.readouterr().err


def test_cli_errors_are_one_line(files, capsys):
    d, gt, res, gt_path, res_path, train = files
    assert main([f"gt={gt_path}", f"results={res_path}", "colour=red"]) == 2
    assert "unknown override 'colour=red'" in capsys.readouterr().err
    bad = [dict(r) for r in res[:3]]
    bad[2]["category_id"] = 12345
    assert main([f"gt={gt_path}", f"results={dump(d / 'bad.json', bad)}"]) == 2
    assert "bad.json[2] (image_id=" in capsys.readouterr().err
    assert main([f"results={res_path}"]) == 2
    assert "gt=PATH is required" in capsys.readouterr().err


def test_checkpoint_mode_reports_missing_engine_or_needs_gt(files, capsys, monkeypatch):
    d, gt, res, gt_path, res_path, train = files
    import ltseg.evaluate as cli
    calls = []

    def fake_predict(checkpoint, overrides=()):
        calls.append((checkpoint, list(overrides)))
        return res_path

    import types
    monkeypatch.setitem(sys.modules, "ltseg.engine.inference",
                        types.SimpleNamespace(predict_checkpoint=fake_predict))
    out = cli.run(load_config([f"gt={gt_path}", "checkpoint=ckpt.pt", "iou_types=[segm]",
                               "overrides=[model.x=1]", f"train_stats={train}"]))
    assert calls == [("ckpt.pt", ["model.x=1"])] and list(out) == ["segm"]
    assert main([f"gt={gt_path}", f"results={res_path}", "checkpoint=ckpt.pt"]) == 2


def test_config_defaults_are_documented():
    cfg = load_config([])
    assert cfg["iou_types"] == ["bbox", "segm"] and cfg["backend"] == "native" and cfg["bins"] == "lvis"
    assert cfg["max_dets"] == 300 and cfg["plots"] is False
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    assert all(f"`{k}`" in doc for k in cfg)
