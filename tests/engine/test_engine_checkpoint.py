import random

import numpy as np
import pytest
import torch
from torch import nn

from ltseg.engine import checkpoint as ck
from tests.engine.engine_fakes import FakeModel, build


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "checkpoint_0000001.pt"
    ck.atomic_save({"iteration": 1, "model": {}}, path)
    with pytest.raises(Exception):
        ck.atomic_save({"iteration": 2, "model": {}, "bad": lambda: 0}, path)  # unpicklable
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_keep_last_k_and_latest_pointer(tmp_path):
    for it in (2, 4, 6, 8):
        ck.save_checkpoint(tmp_path, ck.checkpoint_name(it), {"iteration": it, "model": {}}, keep_last=2)
    assert [i for i, _ in ck.list_checkpoints(tmp_path)] == [6, 8]
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint_0000008.pt"
    ck.save_checkpoint(tmp_path, ck.FINAL_NAME, {"iteration": 10, "model": {}}, keep_last=2)
    assert ck.latest_checkpoint(tmp_path).name == ck.FINAL_NAME
    (tmp_path / ck.LAST_POINTER).unlink()
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint_0000008.pt"
    assert ck.latest_checkpoint(tmp_path / "nothing") is None


def test_trainer_checkpoint_loads_weights_only_with_every_state(tmp_path):
    trainer = build(tmp_path, schedule_overrides={"max_iter": 3})
    trainer.train()
    state = torch.load(tmp_path / ck.FINAL_NAME, weights_only=True)  # no pickled objects
    assert state["iteration"] == 3
    assert {"model", "optimizer", "scheduler", "scaler", "per_rank", "config_yaml"} <= set(state)
    assert state["optimizer"]["state"]  # momentum buffers
    assert state["scheduler"]["last_epoch"] == 3
    rank0 = state["per_rank"][0]
    assert {"rng", "data", "generators"} <= set(rank0) and "loss" in rank0["generators"]
    assert rank0["data"] == {"epoch": 0, "offset": 12}
    assert "seen" in state["model"]  # loss-like state buffers travel in the model state
    assert (tmp_path / "config.yaml").read_text() == "fake: true\n"


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_unreadable_checkpoint_names_file(tmp_path):
    bad = tmp_path / "checkpoint_0000005.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="checkpoint_0000005.pt"):
        ck.load_checkpoint(bad)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_incompatible_checkpoint_names_mismatched_keys(tmp_path):
    trainer = build(tmp_path / "a", schedule_overrides={"max_iter": 1})
    trainer.train()
    other = build(tmp_path / "b", schedule_overrides={"max_iter": 1})
    other.model.fc = nn.Linear(6, 5)  # a different class count
    other.model.extra = nn.Linear(2, 2)  # a different head
    with pytest.raises(ck.CheckpointError) as err:
        other.load(tmp_path / "a" / ck.FINAL_NAME)
    msg = str(err.value)
    assert "fc.weight: checkpoint (4, 6) vs model (5, 6)" in msg and "fc.bias" in msg
    assert "missing in checkpoint (2): extra.bias; extra.weight" in msg
    assert "model_final.pt" in msg


def test_resume_true_without_checkpoint_is_an_error(tmp_path):
    trainer = build(tmp_path)
    with pytest.raises(ck.CheckpointError, match="resume=true"):
        trainer.resume_or_start(True)
    trainer.resume_or_start("auto")  # starts fresh
    assert trainer.iteration == 0


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"output directory .*file/run is not writable"):
        ck.ensure_writable_dir(blocker / "run")


def test_disk_full_fails_before_training(tmp_path, monkeypatch):
    class Usage:
        free = 1024

    monkeypatch.setattr(ck.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(OSError, match=r"only 0 MiB free"):
        build(tmp_path)


def test_checkpoint_size_estimate_counts_optimizer_state():
    model = FakeModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert ck.checkpoint_bytes(model, opt) >= 2 * n
