"""Non-finite logits: an eager FloatingPointError on CPU; off CPU (CUDA, mocked here: no GPU in the
test run) no host sync, a NaN loss for the trainer to skip, and no loss state touched."""
import contextlib
import logging

import pytest
import torch

from ltseg.losses import LOSSES, ClassificationLoss, LossContext, SeesawLoss, build_loss
from tests.engine.engine_fakes import build as build_trainer
from tests.losses.loss_reference import small_stats

C = 6
LABELS = torch.tensor([0, 2, 5, 6, 4, 6, 1, 6])
NAMES = sorted(LOSSES)


def ctx(**kw):
    return LossContext(LABELS, small_stats(), generator=torch.Generator().manual_seed(0), **kw)


def bad_logits(loss, value, col=-1):
    z = torch.randn(8, loss.num_logits(C), generator=torch.Generator().manual_seed(0))
    z[5, col] = value  # a background RoI, last column: a column federated never trains, SEQL may drop
    return z


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_cpu_raises_naming_the_loss_and_iteration(name, value):
    loss = build_loss(name)
    expected = rf"{type(loss).__name__}: non-finite classification logits at iteration 41"
    with pytest.raises(FloatingPointError, match=expected):
        loss(bad_logits(loss, value), ctx(iteration=41))


def test_cpu_check_is_exact_when_the_cheap_sum_overflows():
    loss = build_loss("ce")
    z = torch.full((8, C + 1), 3e38)  # finite, but the sum overflows to inf: the exact test decides
    assert torch.isinf(z.sum())
    assert loss.check_inputs(z, ctx()).dtype == torch.float32


@pytest.fixture
def off_cpu(monkeypatch):
    """The CUDA path on CPU tensors: no eager check. Yields a context manager inside which any host
    read-back of a tensor (``.item()``, ``bool()``, ``nonzero``, ``unique`` ...) fails."""
    monkeypatch.setattr(ClassificationLoss, "checks_eagerly", staticmethod(lambda device: False))

    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation in a loss")

    @contextlib.contextmanager
    def no_sync():
        with pytest.MonkeyPatch.context() as mp:
            for attr in ("item", "tolist", "__bool__", "nonzero"):
                mp.setattr(torch.Tensor, attr, sync)
            mp.setattr(torch, "unique", sync)
            yield

    return no_sync


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_off_cpu_nonfinite_logits_give_nan_without_sync(name, value, off_cpu):
    loss, c = build_loss(name), ctx(iteration=41)
    loss(bad_logits(loss, 0.5), c)  # warm-up: class tensors cached (a one-time host copy)
    z = bad_logits(loss, value).requires_grad_()
    with off_cpu():
        v = loss(z, c)
        v.backward()
    assert torch.isnan(v)


@pytest.mark.parametrize("name", NAMES)
def test_off_cpu_finite_logits_unchanged(name, monkeypatch):
    z = bad_logits(build_loss(name), 0.5)
    eager = build_loss(name)(z, ctx())
    monkeypatch.setattr(ClassificationLoss, "checks_eagerly", staticmethod(lambda device: False))
    assert torch.equal(build_loss(name)(z, ctx()), eager)


def test_off_cpu_seesaw_counts_skip_nonfinite_batches(off_cpu):
    loss, c = SeesawLoss(), ctx()
    loss(bad_logits(loss, 0.5), c)
    counts = loss.cum_samples.clone()
    loss(bad_logits(loss, float("nan")), c)
    assert torch.equal(loss.cum_samples, counts)  # the NaN batch is not counted
    loss(bad_logits(loss, 0.5), c)
    assert torch.equal(loss.cum_samples, 2 * counts)


def test_trainer_names_the_iteration_and_the_classification_loss(tmp_path, caplog):
    trainer = build_trainer(tmp_path, schedule_overrides={"max_iter": 3}, model_kwargs={"nan_at": {2}})
    with caplog.at_level(logging.WARNING, logger="ltseg"):
        trainer.train()
    assert trainer.skipped_steps == 1
    assert "iteration 2: non-finite loss or gradient (loss_cls=nan" in caplog.text
    assert "loss_cls: non-finite classification logits or loss; step skipped" in caplog.text
