"""DDP with 2 gloo processes on CPU (env:// like torchrun): same parameters as one process on the
same global batch; a crashing or hanging rank aborts its peers instead of hanging."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.engine.engine_fakes import build

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(out: Path, *args: str, world_size: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(world_size), "RANK": str(rank), "LOCAL_RANK": str(rank)}
        log = open(out.parent / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.engine.engine_fakes", "--out", str(out), *args],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def test_two_gloo_ranks_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    procs = launch_ranks(out, "--dropout", "0", "--noise-weight", "0", "--max-iter", "12")
    rcs = [p.wait(timeout=180) for p in procs]
    assert rcs == [0, 0], (tmp_path / "rank0.log").read_text() + (tmp_path / "rank1.log").read_text()

    torch.use_deterministic_algorithms(True)
    try:
        single = build(tmp_path / "single", global_batch=4, model_kwargs={"dropout": 0.0, "noise_weight": 0.0})
        single.train()
    finally:
        torch.use_deterministic_algorithms(False)
    expected = dict(single.model.named_parameters())
    initial = build(tmp_path / "init").model.state_dict()
    for rank in (0, 1):
        got = torch.load(out / f"params_rank{rank}.pt", weights_only=True)
        for k, v in expected.items():
            assert torch.allclose(got[k], v.detach(), atol=1e-5, rtol=0), f"rank {rank} {k}"
            assert not torch.allclose(got[k], initial[k], atol=1e-3), f"{k} did not train"
    assert (out / "model_final.pt").exists() and not list(out.glob("params_rank*.pt.tmp*"))
    metrics = (out / "metrics.jsonl").read_text()  # rank 0 only writes
    assert metrics.count('"iteration": 12') == 1


def test_crashing_rank_aborts_the_other(tmp_path):
    procs = launch_ranks(tmp_path / "run", "--fail-rank", "1", "--timeout", "30")
    t0 = time.time()
    rcs = [p.wait(timeout=120) for p in procs]
    assert rcs[0] != 0 and rcs[1] != 0
    log0 = (tmp_path / "rank0.log").read_text()
    assert "rank 0: training failed at iteration 3" in log0 and "remote worker crashing" in log0
    assert "rank 1: training failed at iteration 3: RuntimeError: injected failure" in (tmp_path / "rank1.log").read_text()
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_hanging_rank_times_out(tmp_path):
    procs = launch_ranks(tmp_path / "run", "--hang-rank", "1", "--timeout", "5")
    try:
        assert procs[0].wait(timeout=120) != 0
        log0 = (tmp_path / "rank0.log").read_text()
        assert "rank 0: training failed at iteration 3" in log0 and "Timed out" in log0
    finally:
        procs[1].kill()
        procs[1].wait()
