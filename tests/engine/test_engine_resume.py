"""Kill-and-resume: a run SIGKILLed mid-training and resumed ends bitwise equal to an
uninterrupted run (CPU, deterministic); SIGTERM (preemption) writes a checkpoint and exits 143."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def launch(out: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    stderr = open(log or out.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, "-m", "tests.engine.engine_fakes", "--out", str(out), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def finish(proc: subprocess.Popen, expect_rc: int = 0) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == expect_rc, f"rc={proc.returncode}\n{out}\n{Path(proc.args[4]).with_suffix('.log').read_text()}"
    return out


def wait_for(predicate, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def assert_bitwise_equal(a: Path, b: Path) -> None:
    pa, pb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"{k} differs by {(pa[k] - pb[k]).abs().max()}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    finish(launch(out))
    return out / "params_rank0.pt"


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = launch(out, "--sleep", "0.15")
    wait_for(lambda: (out / "checkpoint_0000006.pt").exists() or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "model_final.pt").exists()
    stdout = finish(launch(out, "--resume", "auto", log=tmp_path / "resume.log"))
    assert "iteration=12" in stdout
    assert "resumed from" in (tmp_path / "resume.log").read_text()
    assert_bitwise_equal(uninterrupted, out / "params_rank0.pt")


def test_resume_without_restoring_rng_would_differ(tmp_path, uninterrupted):
    """Control: the comparison above can fail (a fresh run from the same checkpoint without
    its RNG states is not bitwise identical)."""
    out = tmp_path / "run"
    finish(launch(out, "--max-iter", "6"))
    ckpt = torch.load(out / "model_final.pt", weights_only=True)
    ckpt["per_rank"] = []  # drop RNG + sampler state: the trainer warns and reseeds
    torch.save(ckpt, out / "model_final.pt")
    finish(launch(out, "--resume", "true", log=tmp_path / "resume.log"))
    with pytest.raises(AssertionError, match="differs"):
        assert_bitwise_equal(uninterrupted, out / "params_rank0.pt")


def test_sigterm_writes_checkpoint_and_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = launch(out, "--sleep", "0.3", "--checkpoint-period", "0", log=log)
    wait_for(lambda: "training iterations" in log.read_text() or proc.poll() is not None)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout = finish(proc, expect_rc=128 + signal.SIGTERM)
    assert "stop_signal=15" in stdout
    saved = sorted(out.glob("checkpoint_*.pt"))
    assert len(saved) == 1 and 0 < torch.load(saved[0], weights_only=True)["iteration"] < 12
    assert "on SIGTERM: writing a checkpoint" in log.read_text()
    finish(launch(out, "--resume", "true", log=tmp_path / "resume.log"))
    assert_bitwise_equal(uninterrupted, out / "params_rank0.pt")
