"""The ledger of every migration and preemption of a run, read from its events and
token times: when the request stalled, for how long, how much text its reader still
had (slack), the idle the stall added where the reader could see it, and an
estimate of the request's change of benefit (metrics.md, "Migrations and preemptions: harm").
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from router.slo import SLO, benefit
from router.timelines import Timelines, lateness, slack

COLUMNS = ("decision", "request_id", "kind", "mode", "source", "destination", "bytes", "start_s",
           "stall_start_s", "stall_s", "slack_s", "visible_idle_s", "benefit_change_est", "outcome")


def _move(events: pd.DataFrame, position: int, mine: np.ndarray) -> tuple[float, str, float]:
    """For the move recorded at `position` of the (time-ordered) events, whose request's
    events are at positions `mine`: when the request stopped emitting, how the move
    ended, and the bytes it moved."""
    row = events.iloc[position]
    if row.kind == "preempt":
        return row.time_s, "done", float(row.bytes)
    own = events.iloc[mine[mine > position]]
    ends = own[own["kind"].isin(["migrate_end", "migrate_abort"])]
    stages = own[own["kind"] == "migrate_stage"]
    if not len(ends):
        return row.time_s, "unfinished", float(stages["bytes"].sum())
    end = ends.iloc[0]
    stages = stages[stages.index < end.name]
    moved = float(stages["bytes"].sum())
    if end.kind == "migrate_abort":
        return np.nan, f"aborted: {end.detail}", moved
    if row.detail == "recompute":
        return end.time_s, "done", moved
    return (float(stages["time_s"].iloc[-1]) if len(stages) else end.time_s), "done", moved


def _benefit_without_stall(times: np.ndarray, stall_start: float, stall: float, slo: SLO, finished: bool,
                           waited: float) -> float:
    """The request's benefit had the stall lasted one ordinary gap: later tokens come earlier."""
    gaps = np.diff(times)
    usual = float(np.median(gaps)) if len(gaps) else 0.0
    shift = max(0.0, stall - usual)
    moved = np.where(times > stall_start, np.maximum(times - shift, stall_start), times)
    tl = Timelines(np.array([0, len(moved)]), moved)
    idle = float(lateness(tl, slo.v)[0])
    if not finished:
        idle = max(idle, waited - shift - slo.v * (len(times) + 1))
    return float(benefit(len(times), idle, finished, slo))


def build_ledger(requests: pd.DataFrame, tokens: pd.DataFrame, events: pd.DataFrame, end_s: float,
                 slos: dict[str, SLO], default: SLO) -> pd.DataFrame:
    events = events.reset_index(drop=True)
    positions = np.flatnonzero(((events["kind"] == "migrate_start") | (events["kind"] == "preempt")).to_numpy())
    info = requests.set_index("request_id")
    by_request = events.groupby("request_id").indices
    token_rows, token_times = tokens.groupby("request_id").indices, tokens["time_s"].to_numpy()
    rows = []
    for position in positions:
        row = events.iloc[position]
        request = info.loc[row.request_id]
        slo = slos.get(str(request.get("tenant", "")), default)
        arrival = float(request["arrival_s"])
        times = token_times[token_rows.get(row.request_id, np.zeros(0, dtype=np.int64))] - arrival
        stall_start, outcome, moved = _move(events, position, by_request[row.request_id])
        kind = "preemption" if row.kind == "preempt" else "migration"
        entry = {"decision": int(row.decision), "request_id": row.request_id, "kind": kind, "mode": row.detail,
                 "source": int(row.instance), "destination": int(row.peer), "start_s": float(row.time_s),
                 "bytes": moved, "stall_start_s": stall_start, "outcome": outcome}
        entry.update(_stall_figures(times, stall_start - arrival, end_s - arrival, slo,
                                    request["status"] == "finished"))
        rows.append(entry)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _stall_figures(times: np.ndarray, stall_start: float, waited: float, slo: SLO, finished: bool) -> dict:
    if np.isnan(stall_start):
        return {"stall_s": 0.0, "slack_s": np.nan, "visible_idle_s": 0.0, "benefit_change_est": 0.0}
    after = times[times > stall_start]
    stall = (float(after[0]) if len(after) else waited) - stall_start
    tl = Timelines(np.array([0, len(times)]), times)
    reading = float(slack(tl, slo.v, np.array([0]), np.array([stall_start]))[0])
    idle = max(float(lateness(tl, slo.v)[0]), -np.inf if finished else waited - slo.v * (len(times) + 1))
    actual = float(benefit(len(times), idle, finished, slo))
    return {"stall_s": stall, "slack_s": reading, "visible_idle_s": max(0.0, stall - reading),
            "benefit_change_est": actual - _benefit_without_stall(times, stall_start, stall, slo, finished, waited)}
