"""One sweep point as one row of the results table: run it, score it, count its
events and (with replays) its harmful moves."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.runs.runformat import Run, write_run
from experiments.runs.runner import run_config
from experiments.scoring.harm import harm_counts
from experiments.scoring.metrics import Window, run_slos, score
from experiments.sweeps.spec import Point
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
    row["parks"], row["parked_s"] = parked(run.events, run.end_s)
    return row


def parked(events: pd.DataFrame, end_s: float) -> tuple[int, float]:
    """The router's parks (preemptions by swap) and the seconds requests spent parked
    (to their resume, their end or the end of the run)."""
    if "detail" not in events:
        return 0, 0.0
    parks = events[(events["kind"] == "preempt") & (events["detail"] == "swap")]
    if not len(parks):
        return 0, 0.0
    after = events[events["kind"].isin(["resume", "finish", "abort", "reject", "fault"])]
    ends = pd.merge_asof(parks[["time_s", "request_id"]].sort_values("time_s"),
                         after[["time_s", "request_id"]].sort_values("time_s").rename(columns={"time_s": "back_s"}),
                         left_on="time_s", right_on="back_s", by="request_id", direction="forward",
                         allow_exact_matches=False)
    return len(parks), float((ends["back_s"].fillna(end_s) - ends["time_s"]).sum())


def last_quarter(table: pd.DataFrame, scheme: str = "smooth") -> float:
    """`scheme`'s attainment of the requests that arrived in the last quarter of arrivals:
    below the run's own when a run ends before a backlog shows (readers' slack hides it)."""
    late = table[table["arrival_s"] >= table["arrival_s"].quantile(0.75)]
    column = "meets_slo" if scheme == "ttft_tbt" else f"meets_{scheme}"
    return float(late[column].mean()) if len(late) else float("nan")


def run_point(point: Point, window: Window, folder: Path | None, stalled: int, replays: int = 0,
              progress=None) -> tuple[dict, list, Run]:
    """Run and score one point (simulated or live, as its config says); write its run
    folder when `folder` is given; count its harmful moves (`replays` counterfactuals,
    simulated). Returns its table row, the ids of its `stalled` requests of largest
    idle latency, and the run. A bad point's ValueError names it."""
    try:
        run = run_config(point.config, progress)
        if folder is not None:
            write_run(run, folder)
        return (*score_point(point, run, window, stalled, replays), run)
    except ValueError as exc:
        raise ValueError(f"point {point.folder.as_posix()}: {exc}") from None


def score_point(point: Point, run: Run, window: Window, stalled: int, replays: int = 0) -> tuple[dict, list]:
    """One point's table row and its `stalled` most stalled request ids."""
    slo, tenants = run_slos(run.meta)
    table, summary = score(run, slo, window, tenants)
    worst = table.sort_values(["idle_latency_s", "request_id"], ascending=[False, True], kind="stable")
    row = {"cluster": point.cluster, "policy": point.policy, "rate": point.rate, "seed": point.seed,
           **({} if point.noise_seed is None else {"noise_seed": point.noise_seed}), **headline(run, summary),
           **{f"{scheme}_attainment_last_quarter": last_quarter(table, scheme) for scheme in SCHEMES},
           **harm_counts(run, slo, tenants, replays)}
    return row, worst["request_id"].head(stalled).tolist()
