import json
import logging
import os
import signal

import pytest
import torch

from ltseg.data.lvis import CorruptImageError
from ltseg.engine.trainer import Trainer
from tests.engine.engine_fakes import FakeLoader, build


def params(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_loss_decreases_and_metrics_logged(tmp_path):
    trainer = build(tmp_path, trainer_overrides={"log_period": 5},
                    schedule_overrides={"max_iter": 40, "base_lr": 0.2, "steps": [100]},
                    model_kwargs={"dropout": 0.0, "noise_weight": 0.0})
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {"loss_cls", "total_loss", "lr", "grad_norm", "time", "data_time", "img_per_s"} <= set(rows[0])
    assert rows[-1]["loss_cls"] < 0.8 * rows[0]["loss_cls"]


def test_nonfinite_loss_skips_the_step(tmp_path, caplog):
    ref = build(tmp_path / "ref", schedule_overrides={"max_iter": 2})
    ref.train()
    trainer = build(tmp_path / "nan", schedule_overrides={"max_iter": 3}, model_kwargs={"nan_at": {2}})
    with caplog.at_level(logging.WARNING, logger="ltseg"):
        trainer.train()
    assert trainer.skipped_steps == 1 and trainer.iteration == 3
    assert "iteration 2: non-finite loss or gradient" in caplog.text
    for k, v in params(ref).items():  # the step at iteration 2 changed nothing
        assert torch.equal(v, params(trainer)[k]), k
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(  # the schedule still advanced
        0.05 * (0.001 + (1 - 0.001) * 1.0), rel=1e-12)


def test_consecutive_nonfinite_steps_abort(tmp_path):
    trainer = build(tmp_path, trainer_overrides={"max_nonfinite": 3}, model_kwargs={"nan_at": {1, 2, 3, 4}})
    with pytest.raises(FloatingPointError, match=r"iteration 3: 3 consecutive non-finite steps"):
        trainer.train()


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    trainer = build(tmp_path, trainer_overrides={"max_corrupt_fraction": 0.5}, corrupt={5})
    with caplog.at_level(logging.WARNING, logger="ltseg"):
        trainer.train()
    assert trainer.iteration == 12 and trainer.corrupt_skipped >= 1
    assert "images/5.png: cannot read image id 5" in caplog.text


def test_too_many_corrupt_images_abort(tmp_path):
    trainer = build(tmp_path, trainer_overrides={"max_corrupt_fraction": 0.0}, corrupt={5})
    with pytest.raises(RuntimeError, match=r"max_corrupt_fraction=0.0 .*images/5.png"):
        trainer.train()


class _CorruptDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 1:
            raise CorruptImageError("images/1.png", 1, "truncated")
        return torch.zeros(1)


def test_worker_reraised_corrupt_image_is_recognised(tmp_path):
    """DataLoader workers cannot rebuild CorruptImageError and re-raise a RuntimeError."""
    trainer = build(tmp_path, trainer_overrides={"max_corrupt_fraction": 1.0})
    it = iter(torch.utils.data.DataLoader(_CorruptDataset(), batch_size=1, num_workers=1))
    got = [trainer._next_batch(it), trainer._next_batch(it)]
    assert trainer.corrupt_skipped == 1 and all(torch.equal(b, torch.zeros(1, 1)) for b in got)


def test_ctrl_c_stops_cleanly_with_a_checkpoint(tmp_path):
    class InterruptingLoader(FakeLoader):
        def __iter__(self):
            inner = super().__iter__()

            class It:
                count = 0

                def __next__(self):
                    It.count += 1
                    if It.count == 5:
                        os.kill(os.getpid(), signal.SIGINT)
                    return next(inner)

            return It()

    before = signal.getsignal(signal.SIGINT)   # SIG_IGN when pytest runs as a background job
    trainer = build(tmp_path, trainer_overrides={"checkpoint_period": 0})
    trainer.data_loader = InterruptingLoader(trainer.data_loader.dataset, trainer.sampler, 4)
    assert trainer.train() is None
    assert trainer.stop_signal == signal.SIGINT and trainer.iteration == 5
    saved = torch.load(tmp_path / "checkpoint_0000005.pt", weights_only=True)
    assert saved["iteration"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_trains_with_finite_losses(tmp_path, amp):
    trainer = build(tmp_path, trainer_overrides={"amp": amp, "log_period": 4},
                    model_kwargs={"dropout": 0.0})
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["total_loss"] is not None for r in rows) and trainer.skipped_steps == 0
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    if amp == "fp16":
        assert rows[-1]["loss_scale"] == 65536.0


def test_fp16_overflow_skips_and_lowers_the_scale(tmp_path):
    trainer = build(tmp_path, trainer_overrides={"amp": "fp16"}, schedule_overrides={"max_iter": 2},
                    model_kwargs={"nan_at": {1}})
    trainer.train()
    assert trainer.skipped_steps == 1 and trainer.scaler.get_scale() == 32768.0


def test_amp_rejects_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="trainer.amp"):
        build(tmp_path, trainer_overrides={"amp": "fp8"})


def test_forked_children_keep_default_sigterm(tmp_path):
    """Worker processes forked during training (data loader, evaluation pools) must still die on
    SIGTERM: the trainer's stop handler only acts in the process that installed it."""
    import multiprocessing as mp
    import time

    trainer = build(tmp_path)
    restore = trainer._install_signal_handlers()
    try:
        child = mp.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        time.sleep(0.5)
        child.terminate()
        child.join(timeout=10)
        exitcode = child.exitcode
        if exitcode is None:
            child.kill()
            child.join()
        assert exitcode == -signal.SIGTERM and trainer.stop_signal is None
    finally:
        restore()


def test_channels_last_trains(tmp_path):
    trainer = build(tmp_path, trainer_overrides={"channels_last": True}, schedule_overrides={"max_iter": 2})
    trainer.train()
    assert trainer.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.skipped_steps == 0


def test_compile_needs_a_backbone(tmp_path):
    with pytest.raises(ValueError, match="trainer.compile=true needs a model with a .backbone"):
        build(tmp_path, trainer_overrides={"compile": True})


def test_sigterm_during_evaluation_abandons_it_and_checkpoints(tmp_path):
    import time

    calls = []

    def slow_evaluation(model, iteration):
        calls.append(iteration)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # interrupted by the handler
        return {"bbox": {"AP": 1.0}}

    trainer = build(tmp_path, trainer_overrides={"eval_period": 4, "checkpoint_period": 0})
    trainer.evaluate_fn = slow_evaluation
    t0 = time.time()
    assert trainer.train() is None
    assert time.time() - t0 < 20 and calls == [4]
    assert trainer.stop_signal == signal.SIGTERM and trainer.iteration == 4
    assert torch.load(tmp_path / "checkpoint_0000004.pt", weights_only=True)["iteration"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_periodic_evaluation_is_logged(tmp_path):
    seen = []
    trainer = build(tmp_path, trainer_overrides={"eval_period": 5})
    trainer.evaluate_fn = lambda model, it: seen.append(it) or {"bbox": {"AP": float(it)}}
    metrics = trainer.train()
    assert seen == [5, 10, 12]
    assert metrics == {"bbox": {"AP": 12.0}} and trainer.model.training
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["iteration"] for e in evals] == [5, 10, 12]
