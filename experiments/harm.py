"""Which migrations and preemptions hurt users: the run's ledger, and for simulated
runs a counterfactual per decision (the same config and seed with that one decision
vetoed, run to the end): the decision is harmful when the run with it has less
total benefit than the run without it, helpful when more, neutral within `NEUTRAL`.
`pdlab harm RUN` prints the report and saves harm.csv and harm.json beside the run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

from experiments.config import ExperimentConfig
from experiments.imports import read_any
from experiments.metrics import run_end, run_slos, score
from experiments.runformat import Run
from migration.ledger import build_ledger
from router.slo import SLO

NEUTRAL = 1.0


def ledger(run: Run, slo: SLO, tenant_slos: dict[str, SLO]) -> pd.DataFrame:
    return build_ledger(run.requests, run.tokens, run.events, run_end(run), tenant_slos, slo)


def replay_without(config: ExperimentConfig, decision: int, slo: SLO, tenant_slos: dict[str, SLO]) -> float:
    """Total benefit of the same run with decision `decision` vetoed."""
    from experiments.runner import simulate

    run = simulate(config, veto=frozenset({decision}))
    return float(score(run, slo, tenant_slos=tenant_slos)[0]["benefit"].sum())


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
        config = ExperimentConfig.model_validate(run.meta["config"])
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


def _print(report: dict, console: Console) -> None:
    table = Table(title="migrations and preemptions")
    for column in ("move", "n", "replayed", "harmful", "neutral", "helpful", "visible", "idle s", "stall s"):
        table.add_column(column, justify="left" if column == "move" else "right")
    for move, row in report.items():
        table.add_row(move, str(row["count"]), str(row["replayed"]), str(row["harmful"]), str(row["neutral"]),
                      str(row["helpful"]), str(row["with_visible_idle"]), f"{row['visible_idle_s']:.3f}",
                      "-" if row["mean_stall_s"] is None else f"{row['mean_stall_s']:.4f}")
    console.print(table)


def _handle(args: argparse.Namespace) -> int:
    run = read_any(args.run)
    console = Console()
    table = analyse(run, *run_slos(run.meta), args.replays, args.seed, console)
    report = summary(table)
    out = Path(args.out or (args.run if Path(args.run).is_dir() else Path(args.run).parent))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "harm.csv", index=False)
    (out / "harm.json").write_text(json.dumps(report, indent=2) + "\n")
    if not len(table):
        console.print("no migration or preemption in this run")
    else:
        _print(report, console)
    console.print(f"wrote {out / 'harm.csv'} and {out / 'harm.json'}")
    return 0


def add_parser(commands) -> None:
    harm = commands.add_parser("harm", help="which migrations and preemptions hurt users")
    harm.add_argument("run", help="a run folder")
    harm.add_argument("--replays", type=int, default=20,
                      help="counterfactual replays (simulated runs), sampled among the router's decisions")
    harm.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    harm.add_argument("--out", help="folder for harm.csv and harm.json (default: the run folder)")
    harm.set_defaults(handler=_handle)
