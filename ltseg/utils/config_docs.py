"""Render ``docs/configs.md`` from the YAML files under ``conf/`` (comments are the documentation).

``python scripts/gen_config_docs.py`` rewrites the page; a test fails when it is out of date.
"""
from __future__ import annotations

from pathlib import Path

GROUP_INTROS = {
    "": "The top-level config: defaults list, run-wide keys, trainer and evaluation keys.",
    "model": "Model architecture (`model=<name>`). `num_classes: null` takes the dataset's.",
    "data": "Datasets (`data=<name>`), with the transforms and loader keys.",
    "loss": "Classification losses (`loss=<name>`): one long-tail method each. See losses.md.",
    "sampler": "Training image samplers (`sampler=<name>`).",
    "schedule": "Optimiser and learning-rate schedules (`schedule=<name>`).",
    "calibration": "SimCal stage two (`python -m ltseg.calibrate calibration=<name>`).",
    "experiment": "Paper reproductions (`+experiment=<name>`): bundles of the groups above.",
    "hydra/launcher": "Hydra launchers (`hydra/launcher=<name>`) for multirun sweeps.",
}


def render(conf_dir: str | Path) -> str:
    """Markdown page: one section per config group, each file shown with its comments."""
    conf_dir = Path(conf_dir)
    files = sorted(p for p in conf_dir.rglob("*.yaml"))
    lines = [
        "# Configs",
        "",
        "Generated from `conf/` by `python scripts/gen_config_docs.py` — the YAML comments are the",
        "documentation of each key; every key has its default here. Override any key on the",
        "command line, e.g. `python -m ltseg.train loss=droploss loss.variant=paper schedule.base_lr=0.01`.",
    ]
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(p.parent.relative_to(conf_dir).as_posix().replace(".", ""), []).append(p)
    for group in sorted(groups, key=lambda g: (g != "", g)):
        title = f"`{group}/`" if group else "Top level"
        lines += ["", f"## {title}", ""]
        if group in GROUP_INTROS:
            lines += [GROUP_INTROS[group], ""]
        for p in groups[group]:
            lines += [f"### `conf/{p.relative_to(conf_dir).as_posix()}`", "", "```yaml",
                      p.read_text().rstrip("\n"), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
