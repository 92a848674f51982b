"""Locations inside the source tree."""
from pathlib import Path

#: the Hydra config folder (``conf/`` beside the package; absolute so console scripts find it)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
