"""`run_sweep`: every point of a sweep, then its results table, plots and report.md."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from rich.console import Console

from experiments.sweeps.points import run_points, write_table
from experiments.sweeps.report import write_outputs
from experiments.sweeps.spec import Sweep


def staging(out: Path) -> Path:
    """Where a sweep into `out` is written until it is whole."""
    return out.parent / f"{out.name}.partial"


@contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A folder to write `out` into: it replaces `out` whole when the block ends, and is
    removed if the block fails or is interrupted (then `out` stays as it was)."""
    out = Path(out)
    work = staging(out)
    shutil.rmtree(work, ignore_errors=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)


def run_sweep(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True,
              console: Console | None = None, quiet: bool = False, address: str | None = None) -> pd.DataFrame:
    """Run the points (in `jobs` processes, or across the Ray cluster at `address`),
    then write results.parquet/.csv, plots/ and report.md under `out`. Everything is
    written to `out.partial` first, which then replaces `out` whole: a sweep into an
    existing folder never leaves old results beside new ones, and one interrupted
    leaves `out` as it was."""
    with written_whole(out) as work:
        table, stalled = run_points(sweep, work, jobs, keep_runs, console, quiet, address)
        write_table(table, work)
        write_outputs(sweep, table, stalled, work)
        if not keep_runs:
            shutil.rmtree(work / "runs", ignore_errors=True)
    return table
