"""The console scripts compose their configs from any working directory."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, args, expect", [
    ("ltseg-train", ["--cfg", "job", "loss=droploss"], "DropLoss"),
    ("ltseg-calibrate", ["--cfg", "job", "checkpoint=x.pt"], "calibration"),
    ("ltseg-evaluate", ["--help"], "gt="),
])
def test_console_script_finds_its_config(tmp_path, script, args, expect):
    exe = BIN / script
    if not exe.exists():
        pytest.fail(f"{script} is not installed: run `make install`")
    out = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
