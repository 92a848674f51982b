import pickle

import pytest
import torch

from ltseg.data.collate import Batch, collate, pad_images
from ltseg.data.masks import BitMasks, PolygonMasks


def sample(h, w, image_id, n=2):
    g = torch.Generator().manual_seed(image_id)
    return {
        "image": torch.rand(3, h, w, generator=g) + 0.5,
        "boxes": torch.tensor([[1.0, 1.0, 5.0, 6.0]] * n),
        "labels": torch.arange(n),
        "masks": BitMasks(torch.ones(n, h, w, dtype=torch.bool)),
        "image_id": image_id,
        "orig_size": (h * 2, w * 2),
        "image_size": (h, w),
        "pos_category_ids": torch.tensor([0, 1]),
        "neg_category_ids": torch.tensor([3]),
        "not_exhaustive_category_ids": torch.tensor([], dtype=torch.int64),
    }


def test_pad_to_multiple_of_32_and_content_kept():
    s = [sample(40, 70, 1), sample(65, 33, 2)]
    b = collate(s)
    assert b.images.shape == (2, 3, 96, 96)
    assert b.image_sizes == [(40, 70), (65, 33)]
    assert b.orig_sizes == [(80, 140), (130, 66)]
    assert b.image_ids == [1, 2]
    for i, x in enumerate(s):
        h, w = x["image_size"]
        assert torch.equal(b.images[i, :, :h, :w], x["image"])
        assert b.images[i, :, h:].abs().sum() == 0 and b.images[i, :, :, w:].abs().sum() == 0
    assert set(b.targets[0]) == {"boxes", "labels", "masks", "pos_category_ids", "neg_category_ids",
                                 "not_exhaustive_category_ids"}
    assert len(b) == 2


@pytest.mark.parametrize("div,expected", [(1, (33, 47)), (32, (64, 64)), (16, (48, 48))])
def test_pad_divisibility(div, expected):
    out = pad_images([torch.ones(3, 33, 20), torch.ones(3, 10, 47)], div)
    assert tuple(out.shape[-2:]) == expected


def test_exact_multiple_not_padded_further():
    assert pad_images([torch.ones(3, 64, 32)]).shape == (1, 3, 64, 32)


def test_batch_to_moves_every_tensor():
    b = collate([sample(20, 20, 1), sample(20, 30, 2)])
    m = b.to("meta")
    assert isinstance(m, Batch) and m.images.device.type == "meta"
    for t in m.targets:
        assert t["boxes"].device.type == "meta" and t["labels"].device.type == "meta"
        assert t["neg_category_ids"].device.type == "meta"
        assert t["masks"].tensor.device.type == "meta"
    assert b.images.device.type == "cpu"              # original untouched


def test_polygon_masks_stay_on_host_and_batch_pickles():
    s = sample(20, 20, 3, n=1)
    s["masks"] = PolygonMasks([[[1.0, 1.0, 5.0, 1.0, 5.0, 6.0]]], 20, 20)
    b = collate([s])
    assert b.to("meta").targets[0]["masks"] is s["masks"]
    b2 = pickle.loads(pickle.dumps(b))                 # crosses DataLoader worker boundaries
    assert torch.equal(b2.images, b.images)


def test_empty_batch_raises():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
