"""The loss benchmark report: per-loss mean ± std over seeds and AP_r against each loss's baseline.

Every method of the loss library is expected (by its paper) to raise AP_r over its baseline:
the sigmoid family over ``bce``, the softmax family (and Seesaw) over ``ce``.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ltseg.analysis.sweep import METRIC_KEYS, Run, group_runs, mean_std_table, plot_pareto

SIGMOID_FAMILY = ("bce", "eql", "beql", "drop_fixed", "droploss", "fbs_aegl", "federated")


def baseline_of(loss: str) -> str:
    return "bce" if loss in SIGMOID_FAMILY else "ce"


def loss_name(group: str) -> str:
    """``loss=<name>`` of a group key (the first one), else the whole key."""
    for part in group.split():
        if part.startswith("loss="):
            return part.split("=", 1)[1]
    return group


def _stats(runs: list[Run], iou_type: str, key: str) -> tuple[float, float, int]:
    vals = [v for v in (r.value(iou_type, key) for r in runs) if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else float("nan"), len(vals)


def apr_verdicts(groups: dict[str, list[Run]], iou_type: str = "segm") -> list[str]:
    """Markdown rows: ΔAP_r vs the baseline and whether it exceeds 2 standard errors."""
    by_loss = {loss_name(k): v for k, v in groups.items()}
    rows = ["| loss | baseline | ΔAP_r (pts) | 2·s.e. | AP_r moves up as the paper reports? |", "|---|---|---:|---:|---|"]
    for loss, runs in by_loss.items():
        base = baseline_of(loss)
        if loss == base or base not in by_loss:
            continue
        m1, s1, n1 = _stats(runs, iou_type, "APr")
        m0, s0, n0 = _stats(by_loss[base], iou_type, "APr")
        delta = 100 * (m1 - m0)
        se2 = 200 * math.sqrt(s1 ** 2 / n1 + s0 ** 2 / n0) if n1 > 1 and n0 > 1 else float("nan")
        if math.isnan(delta):
            verdict = "no AP_r (no rare class evaluated)"
        elif n1 < 2 or n0 < 2:
            verdict = "up (single seed, no error bar)" if delta > 0 else "no (single seed)"
        elif delta > se2:
            verdict = "yes"
        elif delta > 0:
            verdict = "up, but within noise"
        else:
            verdict = "no"
        rows.append(f"| {loss} | {base} | {delta:+.1f} | {'n/a' if math.isnan(se2) else f'{se2:.1f}'} | {verdict} |")
    return rows


def write_loss_report(runs: list[Run], md_path: str | Path, png_path: str | Path, header: str = "") -> str:
    """Write the markdown report and the AP_r-vs-AP_f Pareto plot of the per-loss means."""
    groups = group_runs(runs, ignore=("seed", "trainer.progress"))
    text = [header.rstrip(), ""] if header else []
    for iou_type in ("segm", "bbox"):
        text += [f"## {iou_type}: mean ± std over seeds (%)", "", mean_std_table(groups, iou_type, METRIC_KEYS)]
    text += ["## AP_r against the baseline (segm)", "", *apr_verdicts(groups, "segm"), ""]
    md_path, png_path = Path(md_path), Path(png_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    labels = [loss_name(k) for k in groups]
    points = [(_stats(rs, "segm", "APf")[0], _stats(rs, "segm", "APr")[0]) for rs in groups.values()]
    if plot_pareto(labels, points, png_path, "AP_f", "AP_r", "segm AP_r vs AP_f, mean over seeds"):
        text += [f"![AP_r vs AP_f]({png_path.name})", ""]
    md = "\n".join(text)
    md_path.write_text(md)
    return md
