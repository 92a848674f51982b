"""Outputs of an evaluation: the printed LVIS table, metrics.json, per-category CSV, plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .params import BIN_KEYS

CSV_COLUMNS = ("id", "name", "frequency", "train_image_count", "train_instance_count",
               "AP", "AP50", "AP75", "AR")
_ROWS = (("AP", "IoU=0.50:0.95", "all", "all"), ("AP50", "IoU=0.50", "all", "all"),
         ("AP75", "IoU=0.75", "all", "all"), ("APs", "IoU=0.50:0.95", "small", "all"),
         ("APm", "IoU=0.50:0.95", "medium", "all"), ("APl", "IoU=0.50:0.95", "large", "all"),
         ("APr", "IoU=0.50:0.95", "all", "r"), ("APc", "IoU=0.50:0.95", "all", "c"),
         ("APf", "IoU=0.50:0.95", "all", "f"))


def format_table(metrics: dict) -> str:
    """The LVIS summary table for ``{iou_type: {metric: value}}`` (values on the 0-1 scale).

    Printed as percentages with lvis-api's row labels; -1 (undefined) prints as ``-1``. The
    instance-count bins follow as one line per IoU type.
    """
    lines = []
    for iou_type, m in metrics.items():
        ar_keys = [k for k in m if k.startswith("AR")]
        lines.append(f"== {iou_type} ==")
        for key, iou, area, cats in _ROWS:
            lines.append(f" Average Precision  (AP) @[ {iou:<13} | area={area:>6s} | cats={cats:>3s} ] "
                         f"= {_pct(m.get(key))}")
        for key in ar_keys:
            area = {"s": "small", "m": "medium", "l": "large"}.get(key[2], "all")
            dets = key.split("@")[-1]
            lines.append(f" Average Recall     (AR) @[ IoU=0.50:0.95 | area={area:>6s} | maxDets={dets:>3s} ] "
                         f"= {_pct(m.get(key))}")
        bins = [k for k in BIN_KEYS if k in m]
        if bins:
            lines.append(" Instance-count bins: " + "  ".join(f"{k}={_pct(m[k])}" for k in bins))
    return "\n".join(lines)


def _pct(v) -> str:
    if v is None:
        return "   n/a"
    return "    -1" if v == -1 else f"{100 * v:6.2f}"


def write_metrics_json(metrics: dict, path: Path) -> None:
    """``{iou_type: {key: float}}`` on lvis-api's 0-1 scale (-1 where undefined)."""
    clean = {t: {k: float(v) for k, v in m.items()} for t, m in metrics.items()}
    Path(path).write_text(json.dumps(clean, indent=2) + "\n")


def write_per_category_csv(table: dict, path: Path) -> None:
    """One row per category, ascending id: id, name, frequency, train counts, AP, AP50, AP75, AR."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        cols = [table[c] for c in CSV_COLUMNS]
        for row in zip(*cols):
            w.writerow([int(row[0]), row[1], row[2], int(row[3]), int(row[4]),
                        *(repr(float(v)) for v in row[5:])])


def plot_per_category(table: dict, edges: np.ndarray, path: Path, title: str = "") -> bool:
    """Scatter of per-category AP against training-instance count (log x), coloured r/c/f, with
    the bin edges; categories without GT are left out. Returns False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    ap, n = np.asarray(table["AP"], float), np.asarray(table["train_instance_count"], float)
    freq = np.asarray(table["frequency"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, color in (("r", "tab:red"), ("c", "tab:orange"), ("f", "tab:blue")):
        sel = (freq == g) & (ap > -1)
        ax.scatter(np.maximum(n[sel], 0.8), 100 * ap[sel], s=10, alpha=0.7, color=color, label=g)
    for e in edges:
        if 0 < e < math.inf:
            ax.axvline(e, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training instances per category")
    ax.set_ylabel("AP (%)")
    ax.set_title(title or "per-category AP")
    ax.legend(title="frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_bins(metrics: dict, edges: np.ndarray, path: Path) -> bool:
    """Bar chart of AP1..AP4 per IoU type. Returns False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    labels = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(metrics), 1)
    for j, (iou_type, m) in enumerate(metrics.items()):
        vals = [100 * max(m.get(f"AP{b + 1}", -1), 0) for b in range(len(labels))]
        ax.bar(np.arange(len(labels)) + j * width, vals, width, label=iou_type)
    ax.set_xticks(np.arange(len(labels)) + width * (len(metrics) - 1) / 2, labels)
    ax.set_xlabel("training instances per category")
    ax.set_ylabel("AP (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(e: float) -> str:
    return "inf" if e == math.inf else f"{e:g}"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the evaluation plots")
        return None
    return plt
