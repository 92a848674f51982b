import pytest
import torch

from ltseg.data.masks import PolygonMasks
from ltseg.data.transforms import PIXEL_MEAN, PIXEL_STD, DetectionTransform, resized_shape

H, W = 60, 90
POLYS = [[[10.0, 10.0, 40.0, 12.0, 30.0, 50.0]],                   # triangle
         [[50.0, 5.0, 85.0, 5.0, 85.0, 30.0, 50.0, 30.0], [60.0, 40.0, 70.0, 40.0, 70.0, 55.0]]]


def make_target():
    masks = PolygonMasks(POLYS, H, W)
    return {"boxes": masks.bounding_boxes(), "labels": torch.tensor([0, 1]), "masks": masks}


@pytest.mark.parametrize("h,w,short,cap,expected", [
    (480, 640, 800, 1333, (800, 1067)),
    (640, 480, 800, 1333, (1067, 800)),
    (100, 1000, 800, 1333, (133, 1333)),     # longest edge capped
    (800, 800, 800, 1333, (800, 800)),
    (427, 640, 640, None, (640, 959)),
])
def test_resized_shape(h, w, short, cap, expected):
    assert resized_shape(h, w, short, cap) == expected


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_boxes_and_masks_stay_aligned(dense, seed):
    t = DetectionTransform([40, 75, 120], 150, flip_prob=0.5)
    target = make_target()
    if dense:                              # the box of a dense mask is the mask's own box
        target["masks"] = target["masks"].to_bitmasks()
        target["boxes"] = target["masks"].bounding_boxes()
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    out_img, out = t(image, target, torch.Generator().manual_seed(seed))
    h, w = out_img.shape[-2:]
    assert (out["masks"].height, out["masks"].width) == (h, w)
    mask_boxes = out["masks"].bounding_boxes()
    assert (mask_boxes - out["boxes"]).abs().max() <= (1.0 if dense else 1e-3)
    assert torch.equal(out["labels"], target["labels"])


def test_flip_moves_pixels_boxes_and_masks():
    t = DetectionTransform(None, None, flip_prob=1.0)
    image = torch.zeros(3, H, W)
    image[:, 20, 5] = 255.0
    target = make_target()
    out_img, out = t(image, target, torch.Generator().manual_seed(0))
    bright = (out_img[0] == out_img[0].max()).nonzero().tolist()
    assert bright == [[20, W - 1 - 5]]
    torch.testing.assert_close(out["boxes"][0], torch.tensor([W - 40.0, 10, W - 10.0, 50]))
    torch.testing.assert_close(out["masks"].bounding_boxes(), out["boxes"])


def test_resize_scales_boxes_exactly():
    t = DetectionTransform([120], None)
    target = make_target()
    out_img, out = t(torch.zeros(3, H, W), target)
    assert tuple(out_img.shape[-2:]) == (120, 180)
    torch.testing.assert_close(out["boxes"], target["boxes"] * 2)


def test_normalisation_uses_interface_constants():
    t = DetectionTransform()
    image = torch.tensor(PIXEL_MEAN).view(3, 1, 1).expand(3, 4, 5).clone()
    image[:, 0, 0] += torch.tensor(PIXEL_STD)
    out, _ = t(image, {"boxes": torch.zeros(0, 4), "masks": PolygonMasks([], 4, 5)})
    expected = torch.zeros(3, 4, 5)
    expected[:, 0, 0] = 1.0
    torch.testing.assert_close(out, expected)


def test_jitter_is_a_function_of_the_generator_and_covers_all_sizes():
    t = DetectionTransform([30, 45, 60], 1000, flip_prob=0.5)
    image = torch.rand(3, H, W) * 255

    def run(seed):
        return t(image, make_target(), torch.Generator().manual_seed(seed))
    a, b = run(7), run(7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    shapes = {tuple(run(s)[0].shape[-2:]) for s in range(30)}
    assert shapes == {(30, 45), (45, 68), (60, 90)}


def test_random_transform_requires_generator():
    with pytest.raises(ValueError, match="Generator"):
        DetectionTransform([30, 40])(torch.zeros(3, 5, 5), make_target())
    with pytest.raises(ValueError, match="flip_prob"):
        DetectionTransform(flip_prob=2)
