"""The benchmark script end to end on a reduced case (slow: runs the official API twice)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_eval_script_reports_identical_metrics(tmp_path):
    doc = tmp_path / "bench.md"
    subprocess.run([sys.executable, "scripts/bench_eval.py", "--images", "60", "--categories", "100",
                    "--cache", str(tmp_path / "cache"), "--doc", str(doc)], cwd=ROOT, check=True,
                   timeout=1200)
    rows = [r for r in doc.read_text().splitlines() if r.startswith("| 60 img")]
    assert len(rows) == 3
    assert all(r.rstrip(" |").endswith("0.0e+00") for r in rows)
