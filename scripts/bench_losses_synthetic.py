"""`make bench-losses`: train the tiny model with every loss over 3 seeds on the built-in dataset.

    python scripts/bench_losses_synthetic.py [--losses ce bce ...] [--seeds 0 1 2]
        [--out outputs/bench_losses] [--report docs/results/synthetic_losses.md] [--dry-run | --report-only]
        [--loss-override reweight:trainer.clip_grad_norm=10 ...]
        [-- extra ltseg.train overrides, e.g. schedule=demo data.generator.tail_exponent=1.2]

Each run is ``python -m ltseg.train loss=<name> seed=<s> hydra.run.dir=<out>/<name>/seed<s>``
(same schedule and data for every loss; ``--loss-override LOSS:KEY=VALUE`` adds an override to one
loss's runs, which the report shows in that loss's row); finished runs (with a metrics.json) are skipped, so an
interrupted benchmark resumes. The report (mean ± std per loss, ΔAP_r vs the baseline, Pareto
plot) is written from whatever runs have finished. Hours on CPU.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ltseg.analysis.loss_report import write_loss_report
from ltseg.analysis.sweep import collect_runs, load_run
from ltseg.losses import LOSSES


def commands(losses, seeds, out: Path, extra, per_loss: dict[str, list[str]]) -> list[tuple[Path, list[str]]]:
    """(run folder, command) per loss and seed; ``per_loss[name]`` is appended to that loss's runs."""
    jobs = []
    for name in losses:
        for s in seeds:
            run_dir = out / name / f"seed{s}"
            cmd = [sys.executable, "-m", "ltseg.train", f"loss={name}", f"seed={s}", f"hydra.run.dir={run_dir}",
                   *extra, *per_loss.get(name, [])]
            jobs.append((run_dir, cmd))
    return jobs


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--losses", nargs="+", default=sorted(LOSSES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default="outputs/bench_losses")
    ap.add_argument("--report", default="docs/results/synthetic_losses.md")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished runs, train nothing")
    ap.add_argument("--loss-override", action="append", default=[], metavar="LOSS:KEY=VALUE",
                    help="an ltseg.train override for one loss's runs only (repeatable)")
    args = ap.parse_args(argv)
    per_loss: dict[str, list[str]] = {}
    for item in args.loss_override:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            ap.error(f"--loss-override '{item}': expected LOSS:KEY=VALUE, e.g. reweight:trainer.clip_grad_norm=10")
        per_loss.setdefault(name, []).append(override)
    unknown = sorted((set(args.losses) | set(per_loss)) - set(LOSSES))
    if unknown:
        ap.error(f"unknown loss {', '.join(unknown)}; available: {', '.join(sorted(LOSSES))}")
    out = Path(args.out)
    for run_dir, cmd in [] if args.report_only else commands(args.losses, args.seeds, out, extra, per_loss):
        if (run_dir / ".hydra").is_dir() and load_run(run_dir) is not None:
            print(f"done already: {run_dir}")
            continue
        print(" ".join(cmd), flush=True)
        if not args.dry_run and subprocess.run(cmd).returncode != 0:
            print(f"run failed: {run_dir} (continuing; it is left out of the report)", file=sys.stderr)
    if args.dry_run:
        return 0
    runs, pending = collect_runs(out)
    report = Path(args.report)
    header = (
        "# Loss benchmark on the built-in dataset\n\n"
        "`make bench-losses` (`scripts/bench_losses_synthetic.py` with the Makefile's overrides): the tiny model trained with each "
        "loss, same schedule and data, seeds 0, 1, 2; `n` is the number of finished seeds of a loss. "
        + (f"{len(pending)} runs without metrics were left out." if pending else "")
    )
    print(write_loss_report(runs, report, report.with_name(report.stem + "_pareto.png"), header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
