"""Which migrations and preemptions hurt users: the run's ledger, and for simulated
runs a counterfactual per decision (the same config and seed with that one decision
vetoed, run to the end): the decision is harmful when the run with it has less
total benefit than the run without it, helpful when more, neutral within `NEUTRAL`.
`pdlab harm RUN` (experiments/cli/harm.py) prints the report and saves harm.csv and harm.json.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track

from cluster.core.setup import Veto
from cluster.hardware.yamlfile import validate
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run
from experiments.scoring.ledger import build_ledger
from experiments.scoring.metrics import run_end, score
from router.slo import SLO

NEUTRAL = 1.0


def ledger(run: Run, slo: SLO, tenant_slos: dict[str, SLO]) -> pd.DataFrame:
    return build_ledger(run.requests, run.tokens, run.events, run_end(run), tenant_slos, slo)


def replay_without(config: ExperimentConfig, decision: int, slo: SLO, tenant_slos: dict[str, SLO]) -> float:
    """Total benefit of the same run with decision `decision` vetoed."""
    from experiments.runs.runner import simulate

    run = simulate(config, veto=Veto(frozenset({decision})))
    return float(score(run, slo, tenant_slos=tenant_slos)[0]["benefit"].sum())


def check_replayable(run: Run, config: ExperimentConfig) -> None:
    """That the run's requests are the ones its config makes: a replay simulates the
    config, so tables edited or cut after the run would be compared with another run."""
    from experiments.workloads.workload import generate

    made = generate(config.workload, config.seed)
    if config.horizon_s is not None:
        made = made[made["arrival_s"] <= config.horizon_s]
    have = run.requests.sort_values("request_id", kind="stable")
    made = made.sort_values("request_id", kind="stable")
    where = "run.json's config does not make the requests of this run's tables (a replay would simulate another run)"
    if len(have) != len(made):
        raise ValueError(f"{where}: the config makes {len(made)} requests, the requests table has {len(have)}")
    planned = have["planned_output_tokens"] if "planned_output_tokens" in have else None
    for column, mine in (("request_id", have["request_id"]), ("arrival_s", have["arrival_s"]),
                         ("prompt_tokens", have["prompt_tokens"]), ("output_tokens", planned)):
        if mine is None:
            continue
        theirs = made[column].to_numpy()
        differs = ~np.isclose(mine.to_numpy(dtype=float), theirs.astype(float), rtol=0, atol=1e-9)
        if differs.any():
            k = int(np.argmax(differs))
            raise ValueError(f"{where}: request {have['request_id'].iloc[k]} has {column} "
                             f"{mine.iloc[k]:g}, the config makes {theirs[k]:g}")


def classify(change: float) -> str:
    if np.isnan(change):
        return "not replayed"
    if change < -NEUTRAL:
        return "harmful"
    return "helpful" if change > NEUTRAL else "neutral"


def analyse(run: Run, slo: SLO, tenant_slos: dict[str, SLO], replays: int, seed: int = 0,
            console: Console | None = None) -> pd.DataFrame:
    table = ledger(run, slo, tenant_slos)
    table["benefit_change"] = np.nan
    decided = table[table["decision"] >= 0]
    if replays and len(decided) and run.meta.get("runtime") == "sim" and "config" in run.meta:
        config = validate(run.meta["config"], ExperimentConfig, "run.json, config")
        check_replayable(run, config)
        base = float(score(run, slo, tenant_slos=tenant_slos)[0]["benefit"].sum())
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(decided["decision"].unique(), min(replays, decided["decision"].nunique()),
                                   replace=False))
        for decision in track(chosen, description="counterfactual replays", console=console or Console()):
            change = base - replay_without(config, int(decision), slo, tenant_slos)
            table.loc[table["decision"] == decision, "benefit_change"] = change
    table["verdict"] = [classify(c) for c in table["benefit_change"]]
    table["verdict_est"] = np.where(table["visible_idle_s"] > 0, "harmful", "neutral")
    return table


def harm_counts(run: Run, slo: SLO, tenant_slos: dict[str, SLO], replays: int) -> dict:
    """A run's moves, those that added visible idle, and the verdicts of `replays` counterfactuals."""
    table = analyse(run, slo, tenant_slos, replays, console=Console(quiet=True))
    counts = {"moves": int(len(table)), "visible_harm": int((table["visible_idle_s"] > 0).sum())}
    if replays:
        counts.update({verdict: int((table["verdict"] == verdict).sum()) for verdict in ("harmful", "neutral", "helpful")})
    return counts


def summary(table: pd.DataFrame) -> dict:
    out = {}
    for (kind, mode), part in table.groupby(["kind", "mode"], sort=True):
        out[f"{kind} {mode}"] = {
            "count": int(len(part)),
            "replayed": int((part["verdict"] != "not replayed").sum()),
            **{verdict: int((part["verdict"] == verdict).sum()) for verdict in ("harmful", "neutral", "helpful")},
            "visible_idle_s": float(part["visible_idle_s"].sum()),
            "with_visible_idle": int((part["visible_idle_s"] > 0).sum()),
            "mean_stall_s": float(part["stall_s"].mean()) if len(part) else None,
        }
    return out
