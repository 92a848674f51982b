import math

import torch

from ltseg.modeling.box_coder import BoxCoder


def _boxes(n, g):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 500
    wh = 20 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 300  # ratios below the exp clamp
    return torch.cat([xy, xy + wh], dim=1)


def test_round_trip_float64():
    g = torch.Generator().manual_seed(0)
    refs, targets = _boxes(200, g), _boxes(200, g)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5), (30, 30, 15, 15)]:
        coder = BoxCoder(weights)
        deltas = coder.encode(targets, refs)
        torch.testing.assert_close(coder.decode(deltas, refs), targets, atol=1e-9, rtol=0)


def test_known_deltas():
    coder = BoxCoder((10, 10, 5, 5))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    target = torch.tensor([[5.0, 0.0, 25.0, 20.0]], dtype=torch.float64)  # centre +10 in x, width x2
    d = coder.encode(target, ref)
    torch.testing.assert_close(d, torch.tensor([[10 * 10 / 10, 0.0, 5 * math.log(2), 0.0]], dtype=torch.float64))


def test_decode_multiple_boxes_per_reference_and_clamp():
    coder = BoxCoder((1, 1, 1, 1))
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0, 100.0]])
    out = coder.decode(deltas, ref).view(1, 2, 4)
    torch.testing.assert_close(out[0, 0], ref[0])
    # dw clamped at log(1000/16): the box is at most 1000 px wide
    torch.testing.assert_close(out[0, 1, 2] - out[0, 1, 0], torch.tensor(1000.0), rtol=1e-5, atol=1e-3)


def test_decode_half_deltas_in_float32():
    ref = torch.tensor([[1000.3, 1000.7, 1100.1, 1100.9]])  # not representable in float16 (0.5 px steps)
    out = BoxCoder((1, 1, 1, 1)).decode(torch.zeros(1, 4, dtype=torch.float16), ref)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
