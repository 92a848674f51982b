import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from ltseg.modeling.anchors import AnchorGenerator
from ltseg.modeling.poolers import MultiScaleRoIAlign, assign_levels


def test_anchors_match_torchvision():
    sizes, ratios, strides = [[32], [64], [128]], [0.5, 1.0, 2.0], [4, 8, 16]
    ours = AnchorGenerator(sizes, ratios, strides)
    grids = [(16, 12), (8, 6), (4, 3)]
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    tv = TVAnchorGenerator(tuple(tuple(s) for s in sizes), (tuple(ratios),) * 3)
    expected = tv(ImageList(torch.zeros(1, 3, 64, 48), [(64, 48)]), feats)[0]
    got = torch.cat(ours(grids))
    assert got.shape == (sum(h * w for h, w in grids) * 3, 4)
    torch.testing.assert_close(got, expected)


def test_anchor_geometry():
    a = AnchorGenerator([[64]], [0.5, 1.0, 2.0], [16])([(2, 3)])[0]
    assert a.shape == (18, 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(h[:3] / w[:3], torch.tensor([0.5, 1.0, 2.0]), atol=0, rtol=0.03)  # integer-rounded
    # location-major: anchors 3..5 are shifted one stride right of 0..2
    torch.testing.assert_close(a[3:6] - a[0:3], torch.tensor([[16.0, 0, 16, 0]] * 3))
    torch.testing.assert_close(a[9:12] - a[0:3], torch.tensor([[0.0, 16, 0, 16]] * 3))


def test_level_mapping_canonical():
    def box(s):
        return torch.tensor([[10.0, 10.0, 10.0 + s, 10.0 + s]])

    # canonical: 224 px -> P4; halving/doubling moves one level; clamped to P2..P5
    levels = {s: int(assign_levels(box(s), 2, 5)) + 2 for s in [16, 111, 112, 223.9, 224, 447, 448, 2000]}
    assert levels == {16: 2, 111: 2, 112: 3, 223.9: 3, 224: 4, 447: 4, 448: 5, 2000: 5}


def test_multiscale_roialign_pools_from_the_mapped_level():
    strides = [4, 8, 16, 32]
    feats = [torch.full((1, 2, 512 // s, 512 // s), float(k)) for k, s in enumerate(strides)]
    boxes = torch.tensor([[0.0, 0, 40, 40], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 460, 460]])
    out = MultiScaleRoIAlign(7, strides, sampling_ratio=2)(feats, [boxes])
    assert out.shape == (4, 2, 7, 7)
    assert out.mean(dim=(1, 2, 3)).tolist() == [0.0, 1.0, 2.0, 3.0]
