"""`run_sweep`: every point of a sweep, then its results table, plots and report.md."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from rich.console import Console

from experiments.sweeps.points import run_points, write_table
from experiments.sweeps.report import write_outputs
from experiments.sweeps.spec import Sweep


def run_sweep(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True,
              console: Console | None = None, quiet: bool = False, address: str | None = None) -> pd.DataFrame:
    """Run the points (in `jobs` processes, or across the Ray cluster at `address`),
    then write results.parquet/.csv, plots/ and report.md under `out`."""
    table, stalled = run_points(sweep, out, jobs, keep_runs, console, quiet, address)
    write_table(table, out)
    write_outputs(sweep, table, stalled, out)
    if not keep_runs:
        shutil.rmtree(out / "runs", ignore_errors=True)
    return table
