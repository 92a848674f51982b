"""Gather a Hydra multirun sweep into one table and AP_r/AP_c vs AP_f Pareto plots.

    python scripts/collect_sweep.py MULTIRUN_DIR [--out DIR] [--iou-type segm|bbox] [--group-seeds]

Writes ``sweep.md``, ``sweep.csv``, ``pareto_apr_apf_<type>.png`` and ``pareto_apc_apf_<type>.png``
(into MULTIRUN_DIR unless ``--out``) and prints the table.
"""
from __future__ import annotations

import argparse
import sys

from ltseg.analysis import summarize_sweep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("multirun_dir")
    ap.add_argument("--out", default=None)
    ap.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    ap.add_argument("--group-seeds", action="store_true", help="mean ± std over runs differing only in seed")
    args = ap.parse_args(argv)
    try:
        print(summarize_sweep(args.multirun_dir, args.out, args.iou_type, args.group_seeds))
    except (FileNotFoundError, ValueError) as e:
        print(f"collect_sweep: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
