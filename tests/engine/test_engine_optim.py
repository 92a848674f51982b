import pytest
from torch import nn

from ltseg.engine.optim import build_lr_scheduler, build_optimizer, warmup_multistep_factor
from tests.engine.engine_fakes import schedule_cfg


def test_warmup_multistep_factor_values():
    f = lambda it: warmup_multistep_factor(it, warmup_iters=10, warmup_factor=0.001, steps=[20, 30], gamma=0.1)
    assert f(0) == pytest.approx(0.001, abs=1e-15)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5, abs=1e-15)
    assert f(10) == 1.0 and f(19) == 1.0
    assert f(20) == pytest.approx(0.1, abs=1e-15) and f(29) == pytest.approx(0.1, abs=1e-15)
    assert f(30) == pytest.approx(0.01, abs=1e-15)


def test_scheduler_lr_per_iteration_matches_formula():
    sched = schedule_cfg(max_iter=40, base_lr=0.02, warmup_iters=10, warmup_factor=0.001, steps=[20, 30])
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, sched)
    lrs = []
    scheduler = build_lr_scheduler(opt, sched)
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    expected = [0.02 * warmup_multistep_factor(i, 10, 0.001, [20, 30], 0.1) for i in range(40)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_optimizer_groups_momentum_and_norm_decay():
    sched = schedule_cfg(weight_decay=1e-4, weight_decay_norm=0.0, momentum=0.9)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    opt = build_optimizer(model, sched)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert decay["momentum"] == 0.9
    ids = lambda ps: {id(p) for p in ps}
    assert ids(decay["params"]) == ids([model[0].weight, model[3].weight, model[3].bias])
    assert ids(no_decay["params"]) == ids([*model[1].parameters(), *model[2].parameters()])


@pytest.mark.parametrize("steps", [[30, 20], [0], [-5, 10]])
def test_bad_steps_rejected(steps):
    sched = schedule_cfg(max_iter=40, steps=steps)
    opt = build_optimizer(nn.Linear(2, 2), sched)
    with pytest.raises(ValueError, match="schedule.steps"):
        build_lr_scheduler(opt, sched)
