"""Collect the runs of a Hydra multirun sweep into one table and draw AP_r/AP_c vs AP_f Pareto plots.

A run is a folder with ``.hydra/overrides.yaml``; its metrics are the ``metrics.json`` in it or,
when evaluated several times, the one of the latest ``inference/iter_*`` folder
(``{"bbox": {...}, "segm": {...}}`` on the 0-1 scale, -1 = undefined).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METRIC_KEYS = ("AP", "APr", "APc", "APf", "AP1", "AP2", "AP3", "AP4")


@dataclass
class Run:
    """One finished run: its folder, its command-line overrides and ``{iou_type: {metric: value}}``."""

    path: Path
    overrides: list[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or self.path.name

    def value(self, iou_type: str, key: str) -> float:
        """Metric on the 0-1 scale; NaN when missing or undefined (-1)."""
        v = self.metrics.get(iou_type, {}).get(key)
        return float("nan") if v is None or v == -1 else float(v)


def _latest_metrics(run_dir: Path) -> Path | None:
    top = run_dir / "metrics.json"
    if top.is_file():
        return top
    found = sorted(run_dir.glob("**/metrics.json"), key=lambda p: (p.parent.name, str(p)))
    return found[-1] if found else None


def load_run(run_dir: str | Path) -> Run | None:
    """The run in ``run_dir``; None when it has no metrics (unfinished). Bad files raise naming the file."""
    run_dir = Path(run_dir)
    ov_file = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(ov_file.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{ov_file}: cannot read the run's overrides ({e})") from None
    if not isinstance(overrides, list):
        raise ValueError(f"{ov_file}: expected a list of overrides, got {type(overrides).__name__}")
    path = _latest_metrics(run_dir)
    if path is None:
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable metrics.json ({e})") from None
    if not isinstance(metrics, dict) or not any(isinstance(v, dict) for v in metrics.values()):
        raise ValueError(f"{path}: expected {{iou_type: {{metric: value}}}}, e.g. {{'segm': {{'AP': ...}}}}")
    return Run(run_dir, [str(o) for o in overrides], metrics)


def collect_runs(multirun_dir: str | Path) -> tuple[list[Run], list[Path]]:
    """All runs below ``multirun_dir`` (sorted by folder) and the run folders without metrics yet."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder {root} does not exist")
    run_dirs = sorted({p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")}, key=str)
    if not run_dirs:
        raise ValueError(f"{root}: no runs found (no */.hydra/overrides.yaml below it)")
    runs, pending = [], []
    for d in run_dirs:
        run = load_run(d)
        (runs if run is not None else pending).append(run if run is not None else d)
    return runs, pending


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def runs_table(runs: list[Run], iou_type: str = "segm", keys=METRIC_KEYS) -> str:
    """Markdown table, one row per run, metrics in percent."""
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in runs:
        lines.append(f"| {r.label} | " + " | ".join(_fmt(r.value(iou_type, k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_csv(runs: list[Run], path: str | Path, keys=METRIC_KEYS) -> None:
    """One row per run and IoU type; metrics on the 0-1 scale, empty when undefined."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "overrides", "iou_type", *keys])
        for r in runs:
            for t in sorted(r.metrics):
                vals = [r.value(t, k) for k in keys]
                w.writerow([str(r.path), " ".join(r.overrides), t, *("" if math.isnan(v) else repr(v) for v in vals)])


def group_runs(runs: list[Run], ignore: tuple[str, ...] = ("seed",)) -> dict[str, list[Run]]:
    """Runs grouped by their overrides without the ``ignore`` keys (e.g. the seeds of one method)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = " ".join(o for o in r.overrides if o.split("=", 1)[0].lstrip("+~") not in ignore)
        groups.setdefault(key or "(defaults)", []).append(r)
    return groups


def mean_std_table(groups: dict[str, list[Run]], iou_type: str = "segm", keys=METRIC_KEYS) -> str:
    """Markdown table of mean ± sample std (percent) per group, with the number of runs."""
    lines = ["| run | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, rs in groups.items():
        cells = []
        for k in keys:
            vals = [v for v in (r.value(iou_type, k) for r in rs) if not math.isnan(v)]
            if not vals:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{100 * vals[0]:.1f}")
            else:
                cells.append(f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both maximised), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points) if j != i and not (math.isnan(x2) or math.isnan(y2))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(labels: list[str], points: list[tuple[float, float]], path: str | Path,
                xlabel: str = "AP_f", ylabel: str = "AP_r", title: str = "") -> bool:
    """Scatter (percent) with the Pareto front drawn as a line (DropLoss paper Fig. 3 style).

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path}")
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [100 * p[0] for p in points]
    ys = [100 * p[1] for p in points]
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for x, y, lab in zip(xs, ys, labels):
        ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", lw=1, zorder=2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{xlabel} (%)")
    ax.set_ylabel(f"{ylabel} (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def summarize_sweep(multirun_dir: str | Path, out_dir: str | Path | None = None, iou_type: str = "segm",
                    group_seeds: bool = False) -> str:
    """Table (markdown + CSV) and the AP_r-AP_f / AP_c-AP_f Pareto PNGs of a sweep; returns the markdown."""
    runs, pending = collect_runs(multirun_dir)
    if not runs:
        raise ValueError(f"{multirun_dir}: none of the {len(pending)} runs has a metrics.json yet")
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    if group_seeds:
        groups = group_runs(runs)
        table = mean_std_table(groups, iou_type)
        labels = list(groups)
        means = [
            tuple(statistics.mean([r.value(iou_type, k) for r in rs]) for k in ("APf", "APr", "APc"))
            for rs in groups.values()
        ]
    else:
        table = runs_table(runs, iou_type)
        labels = [r.label for r in runs]
        means = [(r.value(iou_type, "APf"), r.value(iou_type, "APr"), r.value(iou_type, "APc")) for r in runs]
    write_csv(runs, out / "sweep.csv")
    text = f"{iou_type} metrics (%), {len(runs)} runs from {multirun_dir}\n\n{table}"
    if pending:
        text += "\nruns without metrics (unfinished?): " + ", ".join(str(p) for p in pending) + "\n"
    (out / "sweep.md").write_text(text)
    plot_pareto(labels, [(m[0], m[1]) for m in means], out / f"pareto_apr_apf_{iou_type}.png", "AP_f", "AP_r", f"{iou_type}: AP_r vs AP_f")
    plot_pareto(labels, [(m[0], m[2]) for m in means], out / f"pareto_apc_apf_{iou_type}.png", "AP_f", "AP_c", f"{iou_type}: AP_c vs AP_f")
    return text
