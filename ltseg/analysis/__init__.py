"""Post-hoc analysis of runs: sweep tables, mean ± std over seeds, Pareto plots."""
from ltseg.analysis.sweep import (
    Run, collect_runs, group_runs, load_run, mean_std_table, pareto_front, plot_pareto, runs_table,
    summarize_sweep, write_csv,
)

__all__ = ["Run", "collect_runs", "group_runs", "load_run", "mean_std_table", "pareto_front", "plot_pareto",
           "runs_table", "summarize_sweep", "write_csv"]
