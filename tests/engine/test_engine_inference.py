import json

import pytest

from ltseg.engine.inference import load_run_config, merge_shards


def test_merge_shards_streams_lists_in_rank_order(tmp_path):
    shards = []
    for rank, items in enumerate([[{"image_id": 1, "score": 0.5}], [], [{"image_id": 2}, {"image_id": 3}]]):
        shards.append(tmp_path / f"results_rank{rank:03d}.json")
        shards[-1].write_text(json.dumps(items))
    out = merge_shards(shards, tmp_path / "results.json")
    assert json.loads(out.read_text()) == [{"image_id": 1, "score": 0.5}, {"image_id": 2}, {"image_id": 3}]
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_shards_rejects_a_broken_shard(tmp_path):
    bad = tmp_path / "results_rank000.json"
    bad.write_text('[{"image_id": 1}')  # truncated: the rank died while writing
    with pytest.raises(ValueError, match="results_rank000.json is not a JSON list"):
        merge_shards([bad], tmp_path / "results.json")


def test_run_config_from_beside_the_checkpoint_with_overrides(tmp_path):
    (tmp_path / "config.yaml").write_text("data:\n  num_workers: 1\nseed: 0\n")
    cfg = load_run_config(tmp_path / "model_final.pt", ["data.num_workers=0", "seed=3"])
    assert cfg.data.num_workers == 0 and cfg.seed == 3
