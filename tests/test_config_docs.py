from pathlib import Path

from ltseg.utils.config_docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_configs_doc_is_up_to_date():
    """docs/configs.md must list every config file and key: regenerate with scripts/gen_config_docs.py."""
    assert (ROOT / "docs" / "configs.md").read_text() == render(ROOT / "conf")


def test_render_lists_every_yaml(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 0  # the seed\n")
    (tmp_path / "loss" / "x.yaml").write_text("gamma: 2\n")
    page = render(tmp_path)
    assert "seed: 0  # the seed" in page and "### `conf/loss/x.yaml`" in page and "gamma: 2" in page
