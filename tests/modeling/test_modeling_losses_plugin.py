"""Every classification loss of conf/loss plugs into the model through the interface alone."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ltseg.modeling import build_model
from tests.modeling.modeling_testlib import make_batch, make_stats, model_cfg

LOSS_CONFS = sorted((Path(__file__).resolve().parents[2] / "conf" / "loss").glob("*.yaml"))
C = 5


@pytest.mark.parametrize("conf", LOSS_CONFS, ids=[p.stem for p in LOSS_CONFS])
def test_loss_trains_and_scores_in_the_model(conf):
    torch.manual_seed(0)
    loss = instantiate(OmegaConf.load(conf))
    model = build_model(model_cfg("tiny", **{"roi_heads.batch_size_per_image": 32}), loss, make_stats(C))
    model.set_loss_generator(torch.Generator().manual_seed(0))
    model.set_sampling_generator(torch.Generator().manual_seed(0))
    images, sizes, targets = make_batch(C, size=(96, 96))
    losses = model(images, sizes, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    model.eval()
    with torch.no_grad():
        det = model.detect(images, sizes)
    for d in det:
        assert len(d["scores"]) > 0 and bool(((d["scores"] > 0) & (d["scores"] <= 1)).all())
