import json
import logging
import sys

from ltseg.engine.logging import MetricWriter


def test_missing_tensorboard_degrades_to_jsonl(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="ltseg"):
        writer = MetricWriter(tmp_path, max_iter=10, images_per_batch=4, tensorboard=True, progress=True)
    assert writer.tb is None and "TensorBoard disabled" in caplog.text
    writer.progress(3, 0.5, 1.25)
    assert writer.bar.n == 3 and "img_s=8.0" in str(writer.bar.postfix)
    writer.scalars(3, {"loss_cls": 1.25, "lr": 0.01, "bad": float("nan")})
    writer.evaluation(3, {"bbox": {"AP": 10.0, "APr": 1.0}})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"iteration": 3, "loss_cls": 1.25, "lr": 0.01, "bad": None},
                    {"iteration": 3, "eval": {"bbox": {"AP": 10.0, "APr": 1.0}}}]


def test_non_main_rank_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path, enabled=False)
    writer.scalars(1, {"loss": 1.0})
    writer.progress(1, 0.1, 1.0)
    writer.close()
    assert not list(tmp_path.iterdir())
