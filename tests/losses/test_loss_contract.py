"""Every conf/loss/*.yaml builds through Hydra and honours the ClassificationLoss contract; bad input."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import ltseg.losses as losses
from ltseg.losses import LOSSES, LossContext, build_loss
from tests.losses.loss_reference import small_stats

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))
C = 6
LABELS = torch.tensor([0, 2, 5, 6, 4, 6, 1, 6])
OVERRIDES = {"beql": ["log_base=2"], "drop_fixed": ["drop_ratio=0.75"], "eql": ["threshold=gompertz"],
             "seesaw": ["q=0"], "focal": ["gamma=1.0"]}


def build(name, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return instantiate(compose(config_name=name, overrides=list(overrides)))


def ctx(labels=LABELS, stats=None, **kw):
    return LossContext(labels, stats or small_stats(), generator=torch.Generator().manual_seed(0), **kw)


def test_every_registered_loss_has_a_yaml_and_vice_versa():
    assert NAMES == sorted(LOSSES)
    for name in NAMES:
        assert type(build(name)) is LOSSES[name]


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    loss = build(name, OVERRIDES.get(name, ()))
    k = loss.num_logits(C)
    assert k in (C, C + 1, C + 2)
    z = torch.randn(8, k, requires_grad=True)
    v = loss(z, ctx())
    assert v.shape == () and v.dtype == torch.float32 and torch.isfinite(v)
    v.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    s = loss.scores(z.detach())
    assert s.shape == (8, C + 1) and s.dtype == torch.float32
    assert torch.all((s >= 0) & (s <= 1))
    assert loss.make_predictor(16, C)(torch.randn(3, 16)).shape == (3, k)


@pytest.mark.parametrize("name", NAMES)
def test_yaml_defaults_equal_constructor_defaults(name):
    import inspect
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=name)
    params = inspect.signature(LOSSES[name].__init__).parameters
    keys = {k for k in cfg if k != "_target_"}
    assert keys == {p for p in params if p != "self"}, "every hyperparameter must be in the yaml"
    for key in keys:
        assert cfg[key] == params[key].default, f"{name}.{key}"


@pytest.mark.parametrize("name", NAMES)
def test_edge_batches_stay_finite(name):
    # all-background batch, only rare classes, classes with zero training instances
    loss = build(name)
    zero = small_stats([0, 5, 20, 50, 200, 400], [0, 9, 30, 80, 500, 900])
    for labels, stats in [(torch.full((8,), C), None), (torch.tensor([0, 1, 0, 1, 6, 6, 6, 6]), None),
                          (LABELS, zero), (torch.tensor([0, 0, 6, 6]), zero)]:
        z = torch.randn(len(labels), loss.num_logits(C), requires_grad=True)
        v = loss(z, ctx(labels, stats))
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(z.grad).all(), (name, labels)


@pytest.mark.parametrize("name", NAMES)
def test_float32_under_autocast_and_no_item(name, monkeypatch):
    # pitfall 7: fp32 under autocast; no .item()/.tolist() inside a loss (no host sync)
    loss, ref_loss = build(name), build(name)
    z = torch.randn(8, loss.num_logits(C)).bfloat16().requires_grad_()
    ref = ref_loss(z.detach().float(), ctx())
    monkeypatch.setattr(torch.Tensor, "item", lambda *a: pytest.fail("item() inside a loss"))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda *a: pytest.fail("tolist() inside a loss"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = loss(z, ctx())
    assert v.dtype == torch.float32
    monkeypatch.undo()
    torch.testing.assert_close(v, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_errors(name):
    loss = build(name)
    k = loss.num_logits(C)
    with pytest.raises(ValueError, match="stats is missing"):
        loss(torch.randn(8, k), LossContext(LABELS, None))
    val = small_stats()
    val = type(val).from_counts(val.image_count, val.instance_count, 1000, split="val")
    with pytest.raises(ValueError, match="'val' split"):
        loss(torch.randn(8, k), ctx(stats=val))
    with pytest.raises(ValueError, match=rf"expected \(R, {k}\)"):
        loss(torch.randn(8, k + 1), ctx())  # num_logits disagrees with the predictor
    bad = torch.randn(8, k)
    bad[3, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="iteration 123"):
        loss(bad, ctx(iteration=123))


def test_unknown_loss_lists_available():
    with pytest.raises(KeyError, match="available: .*droploss.*seesaw"):
        build_loss("dropplos")


@pytest.mark.parametrize("cls,kwargs,match", [
    (losses.DropLoss, {"variant": "both"}, "variant"), (losses.FixedDropLoss, {"drop_ratio": 1.5}, "drop_ratio"),
    (losses.BackgroundEQL, {"log_base": 1.0}, "log_base"), (losses.EqualizationLoss, {"threshold": "soft"}, "threshold"),
    (losses.FBSAEGL, {"gamma": 1.0}, "gamma"), (losses.FBSAEGL, {"freq_variant": "x"}, "variant"),
    (losses.SeesawLoss, {"eps": 0.0}, "eps"), (losses.SoftmaxEQL, {"gamma": 2.0}, "gamma"),
    (losses.FocalLoss, {"gamma": -1.0}, "gamma"), (losses.InverseFrequencyCE, {"normalize": "mean"}, "normalize"),
    (losses.SigmoidBCE, {"prior_prob": 0.0}, "prior_prob"),
])
def test_bad_hyperparameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_all_reduce_path_sums_over_processes(monkeypatch):
    # simulate two identical DDP ranks: all_reduce doubles every count
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda t: (calls.append(t.shape), t.mul_(2)))
    z = torch.randn(8, C)
    u = torch.rand(8, C, generator=torch.Generator().manual_seed(0))
    c = LossContext(LABELS, small_stats(), noise=u)
    torch.testing.assert_close(losses.DropLoss(all_reduce=True)(z, c), losses.DropLoss()(z, c))  # ρ = 2a / 2b
    torch.testing.assert_close(losses.FBSAEGL(all_reduce=True)(z, c), losses.FBSAEGL()(z, c))
    seesaw = losses.SeesawLoss(all_reduce=True)
    seesaw(torch.randn(8, C + 2), c)
    torch.testing.assert_close(seesaw.cum_samples, 2 * torch.bincount(LABELS, minlength=C + 1).double())
    assert len(calls) == 3
