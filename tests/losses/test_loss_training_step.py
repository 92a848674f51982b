"""One training step of the tiny Mask R-CNN with every conf/loss/*.yaml (loss built through Hydra)."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ltseg.data.masks import BitMasks
from ltseg.losses import NormedLinear
from ltseg.modeling import build_model
from tests.losses.loss_reference import small_stats

CONF = Path(__file__).resolve().parents[2] / "conf"
NAMES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
C = 6


def batch(seed=0, size=(96, 128)):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.randn(2, 3, h, w, generator=g)
    targets = []
    for i, labels in enumerate([torch.tensor([0, 4]), torch.tensor([5])]):
        n = len(labels)
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        boxes = torch.cat([xy, xy + 32], dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[k, y0:y1, x0:x1] = True
            images[i, :, y0:y1, x0:x1] += 2.0
        targets.append({"boxes": boxes, "labels": labels, "masks": BitMasks(masks), "image_id": i,
                        "pos_category_ids": labels.unique(), "neg_category_ids": torch.tensor([2])})
    return images, [size, size], targets


@pytest.mark.parametrize("name,overrides", [(n, []) for n in NAMES] + [("eql", ["image_level_rule=true"])])
def test_tiny_training_step(name, overrides):
    with initialize_config_dir(config_dir=str(CONF / "loss"), version_base=None):
        loss = instantiate(compose(config_name=name, overrides=overrides))
    torch.manual_seed(0)
    model_cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    model = build_model(model_cfg, loss, small_stats())
    cls_layer = model.roi_heads.box_predictor.cls_score
    assert cls_layer.out_features == loss.num_logits(C)
    assert isinstance(cls_layer, NormedLinear) == (name == "seesaw")
    torch.testing.assert_close(cls_layer.bias.detach(), torch.full_like(cls_layer.bias, loss.init_bias()))
    model.train()
    model.set_loss_generator(torch.Generator().manual_seed(1))
    model.set_sampling_generator(torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images, sizes, targets = batch()
    before = cls_layer.weight.detach().clone()
    losses = model(images, sizes, targets)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, cls_layer.weight.detach())


def test_seesaw_counts_travel_with_the_model_checkpoint():
    with initialize_config_dir(config_dir=str(CONF / "loss"), version_base=None):
        cfg = compose(config_name="seesaw")
    model_cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    model = build_model(model_cfg, instantiate(cfg), small_stats())
    model.train()
    model.set_sampling_generator(torch.Generator().manual_seed(2))
    images, sizes, targets = batch()
    model(images, sizes, targets)
    counts = model.roi_heads.loss.cum_samples.clone()
    assert counts.shape == (C + 1,) and counts.sum() > 0
    fresh = build_model(model_cfg, instantiate(cfg), small_stats())
    fresh.load_state_dict(model.state_dict())  # the fresh loss has no counts yet: resized on load
    torch.testing.assert_close(fresh.roi_heads.loss.cum_samples, counts, rtol=0, atol=0)
