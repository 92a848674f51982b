"""Sweep collection on fabricated Hydra multirun folders: table, CSV, grouping, Pareto front, plots."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ltseg.analysis import collect_runs, group_runs, mean_std_table, pareto_front, summarize_sweep


def fake_run(root: Path, name: str, overrides: list[str], segm: dict | None, nested: bool = True) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if segm is not None:
        metrics = {"bbox": {k: v / 2 for k, v in segm.items()}, "segm": segm}
        if nested:  # the trainer writes inference/iter_<n>/metrics.json; the latest one counts
            early = d / "inference" / "iter_0000100"
            early.mkdir(parents=True)
            (early / "metrics.json").write_text(json.dumps({"segm": {k: 0.0 for k in segm}}))
            final = d / "inference" / "iter_0001000"
            final.mkdir(parents=True)
            (final / "metrics.json").write_text(json.dumps(metrics))
        else:
            (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def metrics(ap, apr, apc, apf):
    return {"AP": ap, "APr": apr, "APc": apc, "APf": apf, "AP1": apr, "AP2": -1, "AP3": apc, "AP4": apf}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "2026-01-01" / "00-00-00"
    fake_run(root, "0", ["loss=beql", "loss.log_base=2"], metrics(0.20, 0.10, 0.20, 0.25))
    fake_run(root, "1", ["loss=beql", "loss.log_base=4"], metrics(0.25, 0.15, 0.24, 0.27), nested=False)
    fake_run(root, "2", ["loss=beql", "loss.log_base=8"], metrics(0.22, 0.08, 0.21, 0.26))
    fake_run(root, "3", ["loss=beql", "loss.log_base=5"], None)  # unfinished
    return tmp_path / "multirun"


def test_collect_picks_latest_metrics_and_reports_pending(sweep):
    runs, pending = collect_runs(sweep)
    assert [r.label for r in runs] == ["loss=beql loss.log_base=2", "loss=beql loss.log_base=4", "loss=beql loss.log_base=8"]
    assert runs[0].value("segm", "APr") == 0.10  # not the iter_0000100 zeros
    assert runs[0].value("segm", "AP2") != runs[0].value("segm", "AP2")  # -1 -> NaN
    assert len(pending) == 1 and pending[0].name == "3"


def test_summarize_writes_table_csv_and_plots(sweep, tmp_path):
    out = tmp_path / "report"
    text = summarize_sweep(sweep, out)
    assert "| loss=beql loss.log_base=4 | 25.0 | 15.0 | 24.0 | 27.0 | 15.0 | n/a | 24.0 | 27.0 |" in text
    assert "unfinished" in text
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 6 and {r["iou_type"] for r in rows} == {"bbox", "segm"}
    for name in ("pareto_apr_apf_segm.png", "pareto_apc_apf_segm.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front():
    pts = [(0.25, 0.10), (0.27, 0.15), (0.26, 0.08), (0.30, 0.05), (float("nan"), 0.9)]
    assert pareto_front(pts) == [1, 3]
    assert pareto_front([(1, 1), (1, 1)]) == [0, 1]  # ties do not dominate each other


def test_group_over_seeds_mean_and_std(tmp_path):
    for s, apr in enumerate([0.10, 0.20, 0.30]):
        fake_run(tmp_path, f"a{s}", ["loss=eql", f"seed={s}"], metrics(0.2, apr, 0.2, 0.2))
    fake_run(tmp_path, "b0", ["loss=ce", "seed=0"], metrics(0.2, 0.05, 0.2, 0.2))
    runs, _ = collect_runs(tmp_path)
    groups = group_runs(runs)
    assert {k: len(v) for k, v in groups.items()} == {"loss=eql": 3, "loss=ce": 1}
    table = mean_std_table(groups)
    assert "| loss=eql | 3 | 20.0 ± 0.0 | 20.0 ± 10.0 |" in table


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_runs(tmp_path / "missing")
    with pytest.raises(ValueError, match="no runs found"):
        collect_runs(tmp_path)
    d = fake_run(tmp_path, "x", ["loss=ce"], None)
    (d / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x/metrics.json: not a readable"):
        collect_runs(tmp_path)


def test_cli(sweep, tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "collect_sweep.py"
    ok = subprocess.run([sys.executable, str(script), str(sweep), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert ok.returncode == 0 and "loss.log_base=8" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_loss_report_verdicts_and_files(tmp_path):
    from ltseg.analysis.loss_report import write_loss_report

    for s in range(3):
        fake_run(tmp_path / "runs", f"bce{s}", ["loss=bce", f"seed={s}"], metrics(0.2, 0.10 + 0.01 * s, 0.2, 0.3))
        fake_run(tmp_path / "runs", f"eql{s}", ["loss=eql", f"seed={s}"], metrics(0.2, 0.20 + 0.01 * s, 0.2, 0.3))
        fake_run(tmp_path / "runs", f"drop{s}", ["loss=droploss", f"seed={s}"], metrics(0.2, 0.10 - 0.01 * s, 0.2, 0.3))
        fake_run(tmp_path / "runs", f"ce{s}", ["loss=ce", f"seed={s}"], metrics(0.2, 0.10, 0.2, 0.3))
        fake_run(tmp_path / "runs", f"see{s}", ["loss=seesaw", f"seed={s}"], metrics(0.2, 0.10 + 0.02 * (s - 1), 0.2, 0.3))
    runs, _ = collect_runs(tmp_path / "runs")
    md = write_loss_report(runs, tmp_path / "r" / "report.md", tmp_path / "r" / "pareto.png", "# t")
    assert "| eql | bce | +10.0 |" in md and md.split("| eql | bce |")[1].split("\n")[0].endswith("| yes |")
    assert md.split("| droploss | bce |")[1].split("\n")[0].endswith("| no |")
    assert md.split("| seesaw | ce |")[1].split("\n")[0].endswith("| no |")
    assert (tmp_path / "r" / "pareto.png").is_file() and "| loss=eql | 3 |" in md


def test_bench_losses_synthetic_dry_run(tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_losses_synthetic.py"
    res = subprocess.run([sys.executable, str(script), "--losses", "eql", "ce", "--seeds", "0", "1", "--out", str(tmp_path),
                          "--loss-override", "ce:trainer.clip_grad_norm=10", "--dry-run", "--", "schedule.max_iter=10"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if "ltseg.train" in l]
    assert len(lines) == 4 and all("schedule.max_iter=10" in l for l in lines)
    assert f"loss=eql seed=1 hydra.run.dir={tmp_path}/eql/seed1" in lines[1]
    assert [("clip_grad_norm=10" in l) for l in lines] == [False, False, True, True]  # ce's runs only
    for args, message in [(["--losses", "nope"], "available:"), (["--loss-override", "nope:a=1"], "available:"),
                          (["--loss-override", "ce"], "expected LOSS:KEY=VALUE")]:
        bad = subprocess.run([sys.executable, str(script), *args, "--dry-run"], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, args


def test_bench_losses_synthetic_report_only(tmp_path):
    """--report-only trains nothing and reports the finished runs (unfinished ones counted)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_losses_synthetic.py"
    fake_run(tmp_path / "runs", "ce/seed0", ["loss=ce", "seed=0"], metrics(0.2, 0.10, 0.2, 0.3))
    fake_run(tmp_path / "runs", "bce/seed0", ["loss=bce", "seed=0"], metrics(0.2, 0.12, 0.2, 0.3))
    fake_run(tmp_path / "runs", "droploss/seed0", ["loss=droploss", "seed=0", "trainer.progress=false"],
             metrics(0.2, 0.15, 0.2, 0.3))
    (tmp_path / "runs" / "eql" / "seed0" / ".hydra").mkdir(parents=True)
    (tmp_path / "runs" / "eql" / "seed0" / ".hydra" / "overrides.yaml").write_text("- loss=eql\n- seed=0\n")
    report = tmp_path / "out" / "r.md"
    res = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "runs"), "--report", str(report),
                          "--report-only"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ltseg.train" not in res.stdout
    md = report.read_text()
    assert "| loss=ce | 1 |" in md and "| loss=bce | 1 |" in md and "1 runs without metrics" in md
    assert "| loss=droploss | 1 |" in md                       # display-only overrides do not split groups
    assert "| droploss | bce | +3.0 | n/a | up (single seed, no error bar) |" in md
