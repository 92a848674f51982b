"""Regenerate docs/configs.md from conf/ (run after changing any YAML)."""
from pathlib import Path

from ltseg.utils.config_docs import render

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = ROOT / "docs" / "configs.md"
    out.write_text(render(ROOT / "conf"))
    print(f"wrote {out.relative_to(ROOT)}")
