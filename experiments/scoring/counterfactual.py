"""Forked counterfactuals of a simulated run's decisions (metrics.md, "Harm").

The run is replayed once; just before a chosen decision's moment the simulator is
copied and the copy vetoes that decision (a rejection becomes an admission). The
branch runs until every request present at the decision has ended (or `cap_s`
later), and both branches are scored over the same requests (those present at the
decision and those that arrived before the horizon `T`), each as of `T`. The
simulator draws no random numbers after the workload is made and the policy's
generator is copied with it, so the branches share every random number: only the
veto differs. `change` is the factual branch's benefit minus the vetoed one's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.core.setup import Veto
from cluster.core.tables import FINISHED
from experiments.config.experiment import ExperimentConfig
from experiments.parallel import in_order
from experiments.runs.runformat import Run
from experiments.scoring.attribution import running_max
from experiments.scoring.metrics import run_end
from router.slo import SLO, benefit
from router.timelines import Timelines, idle_latency

HORIZONS = ("move", "request", "present")


@dataclass(frozen=True)
class ForkPoint:
    decision: int
    request_id: int
    time_s: float
    """When the decision was made."""
    watch: tuple[int, ...]
    """The branch runs until these have ended: the decided-on request (horizon `request`),
    or every request present at the decision (`present`); none for `move`."""
    factual_end_s: float
    """When the last of them ended in the factual run (`move`: when the move's stall ended)."""
    events_before: int
    """The run's events before the decision: a replay that has another count is another run."""


@dataclass(frozen=True)
class Branch:
    decision: int
    horizon_s: float
    reached: bool
    """The branch met the decision and vetoed it (False: the replay never made it)."""
    requests: pd.DataFrame
    tokens: pd.DataFrame


def ends(run: Run) -> pd.Series:
    """When each request ended (its finish, rejection or abort), by request id; the run's end if it did not."""
    final = run.events[run.events["kind"].isin(["finish", "reject", "abort"])]
    return final.groupby("request_id")["time_s"].max().reindex(run.requests["request_id"]).fillna(run_end(run))


def fork_points(run: Run, decided_at: list[float], decisions, horizon: str = "move",
                move_ends: dict[int, float] | None = None) -> list[ForkPoint]:
    """Where to fork for each of `decisions` (numbers of the run's decisions, made at
    `decided_at`) and how far to go: for `move`, until the move's stall ended in the run
    (`move_ends`, by decision; a decision without one goes until its request ended)."""
    if horizon not in HORIZONS:
        raise ValueError(f"horizon: expected one of {', '.join(HORIZONS)}, got {horizon!r}")
    numbered = run.events[run.events["decision"] >= 0]
    request_of = numbered.drop_duplicates("decision").set_index("decision")["request_id"]
    ended = ends(run)
    arrival = run.requests.set_index("request_id")["arrival_s"]
    move_ends = move_ends or {}
    times = run.events["time_s"].to_numpy()
    points = []
    for decision in decisions:
        t, request = float(decided_at[decision]), int(request_of[decision])
        end, before = move_ends.get(int(decision), np.nan), int(np.searchsorted(times, t, side="left"))
        if horizon == "move" and np.isfinite(end):
            points.append(ForkPoint(int(decision), request, t, (), max(float(end), t), before))
            continue
        if horizon == "present":
            watch = tuple(int(i) for i in ended.index[(arrival <= t).to_numpy() & (ended > t).to_numpy()])
        else:
            watch = (request,)
        points.append(ForkPoint(int(decision), request, t, watch, float(ended.loc[list(watch)].max()), before))
    return points


def _branches(config: ExperimentConfig, points: list[ForkPoint], cap_s: float) -> list[Branch]:
    from cluster.sim.simulator import Simulator
    from experiments.runs.runner import build_setup
    from experiments.workloads.workload import generate

    sim = Simulator(build_setup(config, generate(config.workload, config.seed)))
    sim.start()
    out, frozen, at = [], None, None
    for point in sorted(points, key=lambda p: (p.time_s, p.decision)):
        if point.time_s != at:
            sim.advance(before=point.time_s)
            frozen, at = sim.freeze(), point.time_s
        out.append(_branch(sim, frozen, point, cap_s))
    return out


def _branches_of(args: tuple) -> list[Branch]:
    return _branches(*args)


def _branch(sim, frozen: bytes, point: ForkPoint, cap_s: float) -> Branch:
    """Fork `sim` (paused just before the decision, its state `frozen`), veto the decision,
    run to the horizon."""
    present = {r.id for r in sim.requests.values() if r.arrival <= point.time_s and not r.final}
    same = len(sim.record.time) == point.events_before
    branch = sim.fork(Veto(frozenset({point.decision})), frozen)
    branch.watch = {i for i in point.watch if not branch.requests[i].final}
    limit = point.time_s + cap_s
    over = branch.advance(before=limit, done=lambda: not branch.watch) if branch.watch else False
    horizon = min(max(point.factual_end_s, branch.clock), limit)
    if not over and branch.clock < horizon:
        over = branch.advance(before=horizon)
    branch.stop_at(max(horizon, branch.clock))
    scored = [r for r in branch.requests.values() if r.id in present or point.time_s < r.arrival <= horizon]
    record = branch.close(scored)
    decisions = np.frombuffer(record.decision, dtype=np.int64)
    vetoed = np.flatnonzero((decisions == point.decision)
                            & (np.frombuffer(record.kind, dtype=np.int8) == record.codes["vetoed"]))
    reached = same and len(vetoed) > 0 and record.request[int(vetoed[0])] == point.request_id
    return Branch(point.decision, max(horizon, branch.clock), reached, record.requests, record.tokens)


def run_branches(config: ExperimentConfig, points: list[ForkPoint], cap_s: float = 60.0,
                 jobs: int = 1) -> list[Branch]:
    """The vetoed branch of each fork point, over `jobs` processes (each replays the run)."""
    if jobs <= 1 or len(points) < 2 * jobs:
        return _branches(config, points, cap_s)
    ordered = sorted(points, key=lambda p: (p.time_s, p.decision))
    shares = [ordered[k::jobs] for k in range(jobs)]
    parts = in_order(_branches_of, [(config, share, cap_s) for share in shares], jobs)
    return [branch for part in parts for branch in part]


class Scorer:
    """Benefits of a run's requests as of any time (`at`), its tables indexed once."""

    def __init__(self, requests: pd.DataFrame, tokens: pd.DataFrame, slo: SLO, tenant_slos: dict[str, SLO]) -> None:
        order = np.argsort(pd.Categorical(tokens["request_id"], categories=requests["request_id"]).codes,
                           kind="stable")
        self.times = tokens["time_s"].to_numpy(dtype=np.float64)[order]
        self.counts = tokens["request_id"].value_counts().reindex(requests["request_id"], fill_value=0).to_numpy()
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.position = pd.Series(np.arange(len(requests)), index=requests["request_id"].to_numpy())
        self.arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
        self.finished = (requests["status"] == FINISHED).to_numpy() & (
            self.counts == requests["output_tokens"].to_numpy())
        tenants = requests["tenant"].astype(str).to_numpy() if "tenant" in requests else np.full(len(requests), "")
        self.groups = [(tenant_slos.get(t, slo), tenants == t) for t in np.unique(tenants)]

    def at(self, ids: np.ndarray, end_s: float) -> pd.Series:
        """Each of `ids`' benefit as of `end_s`: tokens after it unseen, a request not
        finished by then waiting until then (metrics.md, unfinished requests), and a
        reader credited only with the tokens it had read by then."""
        k = self.position.reindex(ids).to_numpy()
        first, counts = self.offsets[k], self.counts[k]
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        times = self.times[np.repeat(first, counts) + within]
        owner = np.repeat(np.arange(len(k)), counts)
        keep = times <= end_s
        counts = np.bincount(owner[keep], minlength=len(k))
        times = times[keep] - np.repeat(self.arrival[k], counts)
        tl = Timelines(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), times)
        finished = self.finished[k] & (counts == self.counts[k])
        waited = end_s - self.arrival[k]
        values = np.zeros(len(k))
        for own, members in self.groups:
            mask = members[k]
            if mask.any():
                part = tl.subset(mask)
                idle = idle_latency(part, own.v, finished[mask], waited[mask])
                seen = np.where(finished[mask], part.counts, _read_by(part, own.v, waited[mask]))
                values[mask] = benefit(seen, idle, finished[mask], own)
        return pd.Series(values, index=np.asarray(ids))


def benefits_at(requests: pd.DataFrame, tokens: pd.DataFrame, end_s: float, slo: SLO,
                tenant_slos: dict[str, SLO]) -> pd.Series:
    """`Scorer.at` for every request of the tables."""
    return Scorer(requests, tokens, slo, tenant_slos).at(requests["request_id"].to_numpy(), end_s)


def _read_by(tl: Timelines, v: float, elapsed: np.ndarray) -> np.ndarray:
    """Tokens each reader has seen `elapsed` seconds after arrival: token `i` shows at
    `u_i = max(t_i, u_(i-1) + v)`, so a token that came early is not counted early."""
    index = tl.token_index()
    shown = running_max(tl.times - v * index, tl.counts) + v * index
    owner = np.repeat(np.arange(len(tl.counts)), tl.counts)
    seen = shown <= np.repeat(elapsed, tl.counts)
    return np.bincount(owner, weights=seen, minlength=len(tl.counts)).astype(np.int64)


def compare(factual: Run, points: list[ForkPoint], branches: list[Branch], slo: SLO,
            tenant_slos: dict[str, SLO]) -> pd.DataFrame:
    """One row per fork: horizon, requests scored, the change of their benefit (factual
    minus vetoed), the moved request's own part of it and the rest's."""
    by = {p.decision: p for p in points}
    factual_scores = Scorer(factual.requests, factual.tokens, slo, tenant_slos)
    rows = []
    for branch in branches:
        point = by[branch.decision]
        ids = branch.requests["request_id"].to_numpy()
        had = factual_scores.at(ids, branch.horizon_s)
        got = benefits_at(branch.requests, branch.tokens, branch.horizon_s, slo, tenant_slos).reindex(had.index)
        change = had - got
        own = float(change.get(point.request_id, 0.0))
        rows.append({"decision": point.decision, "fork_reached": branch.reached,
                     "fork_horizon_s": branch.horizon_s - point.time_s, "fork_requests": int(len(change)),
                     "fork_change": float(change.sum()) if branch.reached else np.nan,
                     "fork_change_own": own if branch.reached else np.nan,
                     "fork_change_others": float(change.sum()) - own if branch.reached else np.nan})
    return pd.DataFrame(rows)
