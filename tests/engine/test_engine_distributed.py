import os

import pytest
import torch

from ltseg.engine import distributed as du


def test_single_process_without_torchrun_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert du.all_reduce_mean(torch.tensor([1.0, 3.0])).tolist() == [1.0, 3.0]
    assert du.broadcast_object("x") == "x" and du.all_gather_object(5) == [5]
    du.barrier()


def test_device_choice_errors():
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        du.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device=cuda but CUDA is not available"):
            du.resolve_device("cuda")
        assert du.resolve_device("auto") == torch.device("cpu")


def test_submitit_env_only_inside_submitit_slurm_jobs(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    du.export_submitit_env()  # a plain `python` inside an sbatch script stays single-process
    assert "WORLD_SIZE" not in os.environ


def test_failed_collective_message_names_rank_and_op():
    def broken():
        raise RuntimeError("Connection closed by peer [127.0.0.1]:1234\nmore")

    with pytest.raises(RuntimeError, match=r"rank 0: collective 'all_reduce' failed .*Connection closed by peer.*"
                                           r"another rank probably crashed"):
        du._guard("all_reduce", broken)
