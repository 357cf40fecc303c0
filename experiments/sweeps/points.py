"""Running a sweep's points (simulated in parallel processes, or live one at a time)
and scoring each into one row of the results table."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.hardware.yamlfile import ConfigError
from experiments.runs.runformat import Run, write_run
from experiments.runs.runner import run_config
from experiments.scoring.harm import harm_counts
from experiments.scoring.metrics import Window, run_slos, score
from experiments.sweeps.spec import Point, Sweep, timeline_points
from router.slo import SCHEMES

EVENT_COUNTS = {"migrations_started": "migrate_start", "migrations_completed": "migrate_end",
                "migrations_aborted": "migrate_abort", "preemptions": "preempt"}
DISTRIBUTIONS = {"ttft_p50_s": ("ttft_s", "p50"), "ttft_p99_s": ("ttft_s", "p99"), "tbt_p99_s": ("tbt_s", "p99"),
                 "tpot_p99_s": ("tpot_s", "p99"), "idle_latency_mean_s": ("idle_latency_s", "mean"),
                 "idle_latency_p99_s": ("idle_latency_s", "p99")}


def _count(column: pd.Series, value: str) -> int:
    return int((column == value).sum())


def headline(run: Run, summary: dict) -> dict:
    """The summary's headline numbers and the event counts of one run, flat."""
    row = {key: summary[key] for key in ("requests", "finished", "output_tokens", "serving_time_s",
                                         "throughput_tokens_per_s", "request_throughput_per_s", "smooth_goodput")}
    for scheme in SCHEMES:
        values = summary["schemes"][scheme]
        row[f"{scheme}_attainment"] = values["slo_attainment"]
        row[f"{scheme}_token_goodput"] = values["token_goodput"]
        row[f"{scheme}_request_goodput"] = values["request_goodput"]
    for column, (metric, stat) in DISTRIBUTIONS.items():
        row[column] = summary[metric][stat]
    for status in ("rejected", "unfinished"):
        row[status] = _count(run.requests["status"], status)
    for column, kind in EVENT_COUNTS.items():
        row[column] = _count(run.events["kind"], kind)
    return row


def run_point(point: Point, window: Window, folder: Path | None, stalled: int, replays: int = 0,
              progress=None) -> tuple[dict, list]:
    """Run and score one point (simulated or live, as its config says); write its run
    folder when `folder` is given; count its harmful moves (`replays` counterfactuals,
    simulated). Returns its table row and the ids of its `stalled` requests of largest
    idle latency."""
    run = run_config(point.config, progress)
    if folder is not None:
        write_run(run, folder)
    slo, tenants = run_slos(run.meta)
    table, summary = score(run, slo, window, tenants)
    worst = table.sort_values(["idle_latency_s", "request_id"], ascending=[False, True], kind="stable")
    row = {"cluster": point.cluster, "policy": point.policy, "rate": point.rate, "seed": point.seed,
           **headline(run, summary), **harm_counts(run, slo, tenants, replays)}
    return row, worst["request_id"].head(stalled).tolist()


def _job(args: tuple, progress=None) -> tuple[int, dict, list]:
    index, point, window, folder, stalled, replays = args
    try:
        return (index, *run_point(point, window, folder, stalled, replays, progress))
    except ValueError as exc:
        raise ValueError(f"point {point.folder.as_posix()}: {exc}") from None


def _jobs(sweep: Sweep, out: Path, keep_runs: bool) -> list[tuple]:
    window = Window(sweep.spec.window.warmup_s, sweep.spec.window.cooldown_s)
    kept = {id(p) for p in (sweep.points if keep_runs else timeline_points(sweep))}
    return [(index, point, window, out / "runs" / point.folder if id(point) in kept else None,
             sweep.spec.timeline_requests, sweep.spec.harm_replays) for index, point in enumerate(sweep.points)]


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


def run_points(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True, console: Console | None = None,
               quiet: bool = False) -> tuple[pd.DataFrame, dict[int, list]]:
    """Every point, in `jobs` processes; rows in point order whatever `jobs` is.
    Returns the results table and, per point index, its most stalled request ids."""
    rows, stalled = {}, {}
    work = _jobs(sweep, out, keep_runs)
    if jobs > 1 and any(p.config.runtime == "ray" for p in sweep.points):
        raise ConfigError(f"sweep {sweep.name}: live points (runtime: ray) share one Ray cluster; run them with --jobs 1")
    with _progress(console or Console(stderr=True), quiet) as progress:
        task = progress.add_task(f"sweep {sweep.name}", total=len(work))
        if jobs == 1:
            for job in work:
                requests = progress.add_task(f"  {job[1].folder.as_posix()}", total=None)
                index, row, ids = _job(job, lambda done, total: progress.update(requests, completed=done, total=total))
                progress.remove_task(requests)
                rows[index], stalled[index] = row, ids
                progress.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
                for future in as_completed([pool.submit(_job, job) for job in work]):
                    index, row, ids = future.result()
                    rows[index], stalled[index] = row, ids
                    progress.advance(task)
    table = pd.DataFrame([rows[i] for i in range(len(work))])
    numeric = [c for c in table.columns if c not in ("cluster", "policy")]
    table[numeric] = table[numeric].apply(pd.to_numeric)
    return table, stalled


def write_table(table: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "results.parquet", index=False)
    table.to_csv(out / "results.csv", index=False)
    return [out / "results.parquet", out / "results.csv"]
