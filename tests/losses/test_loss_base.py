import math

import pytest
import torch
from torch import nn

from ltseg.data.category_stats import CategoryStats
from ltseg.losses.base import ClassificationLoss, LossContext, build_loss, prior_bias


class _Softmax(ClassificationLoss):
    def num_logits(self, num_classes):
        return num_classes + 1

    def forward(self, logits, ctx):
        return nn.functional.cross_entropy(self.check_inputs(logits, ctx), ctx.labels)

    def scores(self, logits):
        return logits.float().softmax(-1)


def _ctx(labels, c=3, **kw):
    return LossContext(labels=torch.as_tensor(labels), stats=CategoryStats.from_counts([1] * c, [1] * c, 5), **kw)


def test_prior_bias_gives_prior_probability():
    assert math.isclose(torch.sigmoid(torch.tensor(prior_bias(0.001), dtype=torch.float64)).item(), 0.001, rel_tol=1e-12)


def test_default_predictor_shape_and_init():
    layer = _Softmax().make_predictor(16, 3)
    assert layer.out_features == 4 and torch.all(layer.bias == 0)


def test_check_inputs_rejects_wrong_width_and_nonfinite():
    loss = _Softmax()
    with pytest.raises(ValueError, match=r"expected \(R, 4\)"):
        loss(torch.zeros(2, 3), _ctx([0, 3]))
    bad = torch.zeros(2, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="iteration 17"):
        loss(bad, _ctx([0, 3], iteration=17))


def test_check_inputs_casts_half_to_float32():
    assert _Softmax().check_inputs(torch.zeros(2, 4, dtype=torch.bfloat16), _ctx([0, 3])).dtype == torch.float32


def test_uniform_noise_prefers_injected_and_checks_shape():
    noise = torch.rand(2, 3)
    assert torch.equal(_ctx([0, 1], noise=noise).uniform_noise(torch.zeros(2, 3)), noise)
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        _ctx([0, 1], noise=torch.rand(2, 4)).uniform_noise(torch.zeros(2, 3))
    a = _ctx([0, 1], generator=torch.Generator().manual_seed(3)).uniform_noise(torch.zeros(2, 3))
    b = _ctx([0, 1], generator=torch.Generator().manual_seed(3)).uniform_noise(torch.zeros(2, 3))
    assert torch.equal(a, b)


def test_unknown_loss_name_lists_available():
    with pytest.raises(KeyError, match="available"):
        build_loss("no_such_loss")
