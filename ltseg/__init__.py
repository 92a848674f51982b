"""ltseg: long-tail instance segmentation in pure PyTorch."""
import os

# OpenMP threads that busy-wait turn a CPU shared with data-loader workers (or other jobs) into a
# crawl: a step of the tiny model went from 0.8 s to 7.8 s on a loaded 2-core machine. Sleeping
# threads cost little when the CPU is free. Takes effect only if torch is imported after ltseg;
# set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
