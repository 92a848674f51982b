"""The fused autograd Functions (sigmoid BCE, SEQL's masked CE, Seesaw): gradcheck and equality with
the plain autograd formulas they replace, noise streams, edge batches (float64 unless stated)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltseg.losses import (
    FBSAEGL, BackgroundEQL, DropLoss, FixedDropLoss, LossContext, SeesawLoss, SoftmaxEQL,
)
from ltseg.losses.common import sigmoid_bce, sigmoid_targets
from ltseg.losses.seesaw import _SeesawCE
from ltseg.losses.seql import _MaskedSoftmaxCE
from tests.losses.loss_reference import small_stats

C = 6
BATCHES = {  # labels in 0..C, C = background
    "mixed": torch.tensor([0, 2, 5, 6, 4, 6, 1, 6]),
    "no_foreground": torch.full((8,), C),
    "all_foreground": torch.tensor([0, 1, 2, 3, 4, 5, 0, 3]),
}


def rand(*shape, seed=0, scale=2.0, dtype=torch.float64):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def bce_reference(z, labels, w):
    y = sigmoid_targets(labels, z)
    return F.binary_cross_entropy_with_logits(z, y, weight=w, reduction="sum") / max(z.shape[0], 1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("weight", ["none", "mask", "float", "row"])
def test_sigmoid_bce_gradcheck_and_equals_torch_bce(batch, weight):
    labels = BATCHES[batch]
    z = rand(8, C).requires_grad_()
    w = {"none": None, "mask": (rand(8, C, seed=1) > 0).double(), "float": rand(8, C, seed=2).abs(),
         "row": rand(1, C, seed=3).abs()}[weight]
    assert torch.autograd.gradcheck(lambda x: sigmoid_bce(x, labels, w), (z,))
    v = sigmoid_bce(z, labels, w)
    (g,) = torch.autograd.grad(v, z)
    ref = bce_reference(z, labels, w)
    (g_ref,) = torch.autograd.grad(ref, z)
    assert torch.equal(v, ref) and torch.equal(g, g_ref)  # same element values, products and reduction


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_bce_precomputed_log_sigmoid_and_sigmoid_bit_identical(dtype):
    labels = torch.randint(0, 41, (300,), generator=torch.Generator().manual_seed(0))
    z = rand(300, 40, scale=8.0, dtype=dtype).requires_grad_()
    w = (rand(300, 40, seed=1, dtype=dtype) > 0).to(dtype)
    v = sigmoid_bce(z, labels, w, log_sig=F.logsigmoid(z.detach()), sig=torch.sigmoid(z.detach()))
    v.backward(retain_graph=True)
    g1 = z.grad.clone()
    z.grad = None
    v.backward()  # a second backward recomputes σ(z) (the first consumed the given one)
    ref = bce_reference(z, labels, w)
    (g_ref,) = torch.autograd.grad(ref, z)
    assert torch.equal(v, ref) and torch.equal(g1, g_ref) and torch.equal(z.grad, g_ref)


def test_sigmoid_bce_empty_batch_and_nonfinite_propagates():
    z = torch.zeros(0, C, dtype=torch.float64, requires_grad=True)
    v = sigmoid_bce(z, torch.zeros(0, dtype=torch.long), torch.zeros(0, C, dtype=torch.float64))
    v.backward()
    assert v == 0 and z.grad.shape == (0, C)
    z = rand(2, C)
    z[1, 3] = float("nan")
    assert torch.isnan(sigmoid_bce(z, torch.tensor([0, C]), torch.zeros(2, C, dtype=torch.float64)))  # 0·NaN


def test_sigmoid_bce_refuses_a_differentiable_weight():
    with pytest.raises(ValueError, match="constant"):
        sigmoid_bce(rand(2, C), torch.tensor([0, C]), rand(2, C).requires_grad_())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("masked", [False, True])
def test_masked_softmax_ce_gradcheck_and_equals_cross_entropy(batch, masked):
    labels = BATCHES[batch]
    z = rand(8, C + 1).requires_grad_()
    drop = (rand(8, C, seed=1) > 0) if masked else torch.zeros(8, C, dtype=torch.bool)
    drop.scatter_(1, labels.clamp(max=C - 1)[:, None], labels[:, None] == C)  # never the label
    a = torch.zeros(8, C, dtype=torch.float64).masked_fill_(drop, float("-inf"))
    assert torch.autograd.gradcheck(lambda x: _MaskedSoftmaxCE.apply(x, labels, a), (z,))
    v = _MaskedSoftmaxCE.apply(z, labels, a)
    (g,) = torch.autograd.grad(v, z)
    full = torch.cat([drop, torch.zeros(8, 1, dtype=torch.bool)], 1)
    ref = F.cross_entropy(z.masked_fill(full, float("-inf")), labels)
    (g_ref,) = torch.autograd.grad(ref, z)
    assert torch.equal(v, ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-14, atol=1e-16)
    assert torch.all(g[:, :C][drop] == 0)


@pytest.mark.parametrize("batch", BATCHES)
def test_seesaw_function_gradcheck_and_equals_autograd(batch):
    labels = BATCHES[batch]
    z = rand(8, C + 2).requires_grad_()
    log_s = rand(8, C, seed=1)
    assert torch.autograd.gradcheck(lambda x: _SeesawCE.apply(x, labels, log_s.clone()), (z,))
    v = _SeesawCE.apply(z, labels, log_s.clone())
    (g,) = torch.autograd.grad(v, z)
    fg = labels != C
    cls = F.cross_entropy(z[:, :C] + log_s, labels.clamp(max=C - 1), reduction="none")
    ref = (cls * fg).sum() / 8 + F.cross_entropy(z[:, C:], (~fg).long(), reduction="sum") / 8
    (g_ref,) = torch.autograd.grad(ref, z)
    assert torch.equal(v, ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-14, atol=1e-16)


LOSSES_WITH_NOISE = {
    "droploss": DropLoss, "drop_fixed": FixedDropLoss, "fbs_aegl": lambda: FBSAEGL(mu=0.2), "seql": SoftmaxEQL,
}


@pytest.mark.parametrize("name", LOSSES_WITH_NOISE)
@pytest.mark.parametrize("batch", BATCHES)
def test_stochastic_losses_gradcheck_with_noise_and_generator(name, batch):
    loss, labels, stats = LOSSES_WITH_NOISE[name](), BATCHES[batch], small_stats()
    z = rand(8, loss.num_logits(C)).requires_grad_()
    noise = torch.rand(8, C, generator=torch.Generator().manual_seed(5))
    kept = noise.clone()
    assert torch.autograd.gradcheck(lambda x: loss(x, LossContext(labels, stats, noise=noise)), (z,))
    assert torch.equal(noise, kept)  # injected noise is never written to
    # a generator draws exactly that stream: same value as injecting it
    drawn = loss(z, LossContext(labels, stats, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(drawn, loss(z, LossContext(labels, stats, noise=noise)))
    assert torch.autograd.gradcheck(
        lambda x: loss(x, LossContext(labels, stats, generator=torch.Generator().manual_seed(5))), (z,))
    # float32 logits: the draw goes into a workspace buffer, still the same stream
    z32 = z.detach().float()
    drawn = loss(z32, LossContext(labels, stats, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(drawn, loss(z32, LossContext(labels, stats, noise=noise)))


def test_uniform_noise_into_a_workspace_is_the_same_stream():
    c = LossContext(BATCHES["mixed"], small_stats(), generator=torch.Generator().manual_seed(3))
    buf = torch.empty(0)
    u = c.uniform_noise(torch.zeros(8, C), out=buf)
    assert u.data_ptr() == buf.data_ptr()
    assert torch.equal(u, torch.rand(8, C, generator=torch.Generator().manual_seed(3)))
    injected = LossContext(BATCHES["mixed"], small_stats(), noise=torch.rand(8, C))
    assert injected.uniform_noise(torch.zeros(8, C), out=buf) is injected.noise  # injected noise wins


def test_cpu_workspace_is_reused_and_leaves_no_trace_between_calls():
    """FBS-AEGL's gate lives in a per-module CPU workspace: same memory for the same shape, and a
    module that has seen other batch sizes gives exactly what a fresh module gives."""
    stats = small_stats()
    loss = FBSAEGL()
    first = loss.workspace(torch.zeros(8, C))
    assert loss.workspace(torch.zeros(8, C)).data_ptr() == first.data_ptr()
    assert loss.workspace(torch.zeros(8, C, dtype=torch.float64)).dtype == torch.float64
    for r, seed in [(8, 0), (3, 1), (8, 2), (5, 3)]:
        labels = BATCHES["mixed"][:r]
        z = rand(r, C, seed=seed, dtype=torch.float32).requires_grad_()
        noise = torch.rand(r, C, generator=torch.Generator().manual_seed(seed))
        (g,) = torch.autograd.grad(v := loss(z, LossContext(labels, stats, noise=noise)), z)
        (g_ref,) = torch.autograd.grad(v_ref := FBSAEGL()(z, LossContext(labels, stats, noise=noise)), z)
        assert torch.equal(v, v_ref) and torch.equal(g, g_ref), r


def _old_keep(labels, tail, noise, keep_prob):
    """The pre-fusion DropLoss keep mask (bool ops, one-hot targets), kept here as an oracle."""
    fg = (labels != tail.numel())[:, None]
    keep = torch.where(fg, tail[None, :] == 0, noise <= keep_prob[None, :])
    keep[fg.squeeze(1), labels[fg.squeeze(1)]] = True
    return keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_losses_bit_identical_to_the_autograd_formulas(dtype):
    """At a training-like size: DropLoss, fixed drop, FBS-AEGL, BEQL == BCE with the weight built naively."""
    gen = torch.Generator().manual_seed(0)
    c, r = 50, 400
    counts = torch.randint(1, 300, (c,), generator=gen)
    stats = type(small_stats()).from_counts(counts, counts * 2, 1000)
    tail = stats.tail.to(dtype)
    labels = torch.where(torch.rand(r, generator=gen) < 0.25, torch.randint(0, c, (r,), generator=gen), c)
    z = (4 * torch.randn(r, c, generator=gen)).to(dtype).requires_grad_()
    noise = torch.rand(r, c, generator=gen)
    ctx = LossContext(labels, stats, noise=noise)
    fg = labels != c
    rho = tail[labels[fg]].mean()
    y = sigmoid_targets(labels, z)
    weights = {
        "droploss": _old_keep(labels, tail, noise.to(dtype), tail * rho + (1 - tail) * 2).to(dtype),
        "drop_fixed": _old_keep(labels, tail, noise.to(dtype), tail * 0.5 + (1 - tail) * 2).to(dtype),
    }
    wf = (1 - 0.7) / (1 - 0.7 ** stats.instance_count.double())
    gate = torch.sigmoid(z.detach()) >= 0.7
    ber = fg[:, None] | (noise.to(dtype) < (tail * rho + (1 - tail) * 2)[None, :])
    keep = gate & ber
    keep[fg, labels[fg]] = True
    weights["fbs_aegl"] = keep.to(dtype) * wf.to(dtype)
    neg_log_b = (F.logsigmoid(z.detach()) * (-1 / math.log(4.0))).clamp(max=1.0)
    w_bg = torch.addcmul(z.new_ones(()).detach(), tail[None, :], neg_log_b, value=-1.0)
    w_beql = torch.where(fg[:, None], (1 - tail)[None, :], w_bg)
    w_beql[fg, labels[fg]] = 1
    weights["beql"] = w_beql
    losses = {"droploss": DropLoss(), "drop_fixed": FixedDropLoss(0.5), "fbs_aegl": FBSAEGL(), "beql": BackgroundEQL()}
    for name, loss in losses.items():
        v = loss(z, ctx)
        (g,) = torch.autograd.grad(v, z)
        ref = F.binary_cross_entropy_with_logits(z, y, weight=weights[name], reduction="sum") / r
        (g_ref,) = torch.autograd.grad(ref, z)
        if name == "beql":  # 1 - T·x in place vs addcmul: equal here, but a build may fuse (FMA) differently
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(v, ref, rtol=4 * eps, atol=0)
            torch.testing.assert_close(g, g_ref, rtol=4 * eps, atol=4 * eps * g_ref.abs().max().item())
        else:
            assert torch.equal(v, ref) and torch.equal(g, g_ref), name


def test_seesaw_counts_and_gradcheck_on_edge_batches():
    # q = 0: with q > 0 the compensation uses the detached softmax, which gradcheck's finite
    # differences would see (by design it is a constant; the analytic gradient is checked above)
    stats = small_stats()
    for labels in BATCHES.values():
        loss = SeesawLoss(q=0.0)
        z = rand(8, C + 2).requires_grad_()
        start = torch.tensor([3.0, 40.0, 1.0, 0.0, 7.0, 50.0, 90.0], dtype=torch.float64)
        loss.load_state_dict({"cum_samples": start})

        def f(x):  # the counts grow on every call: restore them so each evaluation sees the same state
            loss.cum_samples.copy_(start)
            return loss(x, LossContext(labels, stats))

        assert torch.autograd.gradcheck(f, (z,))
        torch.testing.assert_close(loss.cum_samples, start + torch.bincount(labels, minlength=C + 1), rtol=0, atol=0)
