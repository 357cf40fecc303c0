"""Running a sweep's points (simulated in parallel processes or as tasks on a Ray
cluster, or live one at a time) into the results table, one row per point."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.hardware.yamlfile import ConfigError
from experiments.parallel import unordered
from experiments.scoring.metrics import Window
from experiments.sweeps.rows import run_point
from experiments.sweeps.spec import Sweep, timeline_points


def _job(args: tuple, progress=None) -> tuple[int, dict, list]:
    index, point, window, folder, stalled, replays = args
    row, ids, _ = run_point(point, window, folder, stalled, replays, progress)
    return index, row, ids


def _jobs(sweep: Sweep, out: Path, keep_runs: bool) -> list[tuple]:
    window = Window(sweep.spec.window.warmup_s, sweep.spec.window.cooldown_s)
    kept = {id(p) for p in (sweep.points if keep_runs else timeline_points(sweep))}
    return [(index, point, window, out / "runs" / point.folder if id(point) in kept else None,
             sweep.spec.timeline_requests, sweep.spec.harm_replays) for index, point in enumerate(sweep.points)]


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


def run_points(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True, console: Console | None = None,
               quiet: bool = False, address: str | None = None) -> tuple[pd.DataFrame, dict[int, list]]:
    """Every point, in `jobs` processes or, given a Ray cluster's `address`, as tasks
    across it; rows in point order either way. Returns the results table and, per
    point index, its most stalled request ids."""
    work = _jobs(sweep, out, keep_runs)
    done = run_jobs(work, f"sweep {sweep.name}", jobs, address, console, quiet)
    return as_table([done[i][0] for i in range(len(work))]), {i: done[i][1] for i in done}


def run_jobs(work: list[tuple], title: str, jobs: int = 1, address: str | None = None,
             console: Console | None = None, quiet: bool = False) -> dict[int, tuple[dict, list]]:
    """Run the jobs (index, point, window, run folder or None, stalled, replays) one at a
    time, in `jobs` processes, or across the Ray cluster at `address`, with a progress
    bar called `title`. Returns each job's row and most stalled request ids, by index."""
    results = {}
    if (jobs > 1 or address) and any(job[1].config.runtime == "ray" for job in work):
        raise ConfigError(f"{title}: live points (runtime: ray) share one Ray cluster; run them with "
                          "--jobs 1 and no --address (give the cluster as ray.address)")
    console = console or Console(stderr=True)
    with _progress(console, quiet) as progress:
        task = progress.add_task(title, total=len(work))

        def done(index: int, row: dict, ids: list) -> None:
            results[index] = row, ids
            progress.advance(task)

        if address:
            from experiments.sweeps.distributed import run_on_cluster

            run_on_cluster(work, address, done, lambda message: console.print(message))
        elif jobs == 1:
            for job in work:
                requests = progress.add_task(f"  {job[1].folder.as_posix()}", total=None)
                done(*_job(job, lambda n, total: progress.update(requests, completed=n, total=total)))
                progress.remove_task(requests)
        else:
            for result in unordered(_job, work, min(jobs, len(work))):
                done(*result)
    return results


def as_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    numeric = [c for c in table.columns if c not in ("cluster", "policy")]
    table[numeric] = table[numeric].apply(pd.to_numeric)
    return table


def write_table(table: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "results.parquet", index=False)
    table.to_csv(out / "results.csv", index=False)
    return [out / "results.parquet", out / "results.csv"]
