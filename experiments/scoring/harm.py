"""Which migrations, preemptions and rejections hurt users (metrics.md, "Harm"): for every
move its direct attribution from the run's tables (`attribution`), and for a sample of
the router's decisions of a simulated run a forked counterfactual (`counterfactual`):
the decision vetoed from its moment on, both branches scored over a bounded horizon.
`pdlab harm RUN` (experiments/cli/harm.py) prints the report (`harmreport`) and saves
harm.csv and harm.json.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console

from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run
from experiments.scoring.attribution import Attribution, Costs, attribute, verdicts
from experiments.scoring.ledger import build_ledger
from experiments.scoring.metrics import run_end
from router.slo import SLO

TOLERANCE = 1.0
"""Benefit (tokens) within which a move is neutral."""


@dataclass(frozen=True)
class HarmOptions:
    forks: int = 20
    """Decisions to fork, sampled among the router's (simulated runs only)."""
    seed: int = 0
    horizon: str = "move"
    cap_s: float = 60.0
    jobs: int = 1
    tolerance: float = TOLERANCE


def config_of(run: Run) -> ExperimentConfig | None:
    if "config" not in run.meta:
        return None
    from cluster.hardware.yamlfile import validate

    return validate(run.meta["config"], ExperimentConfig, "run.json, config")


def costs_of(config: ExperimentConfig) -> Costs:
    from experiments.runs.runner import build_setup
    from experiments.workloads.workload import generate

    view = build_setup(config, generate(config.workload, config.seed)).table.view
    return Costs(np.asarray(view.decode_coeffs), np.asarray(view.prefill_coeffs))


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


def rejections(run: Run) -> pd.DataFrame:
    """The router's rejections, as ledger rows (their attribution is left to a fork)."""
    rejected = run.events[(run.events["kind"] == "reject") & (run.events["decision"] >= 0)]
    return pd.DataFrame({"decision": rejected["decision"].to_numpy(), "request_id": rejected["request_id"].to_numpy(),
                         "kind": "rejection", "mode": "policy", "source": -1, "destination": -1, "bytes": 0.0,
                         "start_s": rejected["time_s"].to_numpy(), "stall_start_s": np.nan, "stall_s": np.nan,
                         "slack_s": np.nan, "visible_idle_s": 0.0, "benefit_change_est": np.nan,
                         "outcome": "done"})


def moves_table(run: Run, slo: SLO, tenant_slos: dict[str, SLO], config: ExperimentConfig | None,
                tolerance: float) -> pd.DataFrame:
    """Every move (and rejection) with its own change, collateral and attributed verdict."""
    ledger = build_ledger(run.requests, run.tokens, run.events, run_end(run), tenant_slos, slo)
    if config is None:
        table = ledger.assign(collateral=np.nan, attributed_change=ledger["benefit_change_est"])
        table["attributed_verdict"] = verdicts(table["attributed_change"], tolerance)
    else:
        attribution = Attribution(run.requests, run.tokens, run.events, run_end(run), tenant_slos, slo,
                                  costs_of(config))
        table = attribute(ledger, attribution, tolerance)
    table = pd.concat([table, rejections(run)], ignore_index=True) if (run.events["kind"] == "reject").any() \
        else table
    table["attributed_verdict"] = np.where(table["kind"] == "rejection", "not attributed",
                                           table["attributed_verdict"])
    table["load"] = _load(run, table)
    table["rule"] = rules_of(run, table["decision"].to_numpy())
    return table


def rules_of(run: Run, decisions: np.ndarray) -> np.ndarray:
    """The policy rule that made each decision (`Policy.rules`; "" for the engine's own
    moves, a policy's untagged ones, or a run that kept no rules)."""
    rules = np.asarray(run.meta.get("decision_rules") or [""], dtype=object)
    known = (decisions >= 0) & (decisions < len(rules))
    return np.where(known, rules[np.where(known, decisions, 0).astype(np.int64)], "")


def _load(run: Run, table: pd.DataFrame) -> np.ndarray:
    """Requests decoding on the move's source when it stalled."""
    from experiments.scoring.attribution import residencies

    stays = {int(i): (part["start_s"].to_numpy(), part["end_s"].to_numpy())
             for i, part in residencies(run.events).groupby("instance")}
    at = table["stall_start_s"].fillna(table["start_s"]).to_numpy()
    out = np.zeros(len(table), dtype=np.int64)
    for k, source in enumerate(table["source"].to_numpy()):
        if int(source) in stays:
            starts, ends = stays[int(source)]
            out[k] = int(np.count_nonzero((starts <= at[k]) & (ends > at[k])))
    return out


def analyse(run: Run, slo: SLO, tenant_slos: dict[str, SLO], options: HarmOptions = HarmOptions(),
            console: Console | None = None) -> pd.DataFrame:
    config = config_of(run)
    table = moves_table(run, slo, tenant_slos, config, options.tolerance)
    for column in ("fork_change", "fork_change_own", "fork_change_others", "fork_horizon_s"):
        table[column] = np.nan
    decided = table["decision"][table["decision"] >= 0].unique()
    if options.forks and len(decided) and run.meta.get("runtime") == "sim" and config is not None:
        check_replayable(run, config)
        stalled = table.dropna(subset=["stall_start_s"])
        move_ends = dict(zip(stalled["decision"], stalled["stall_start_s"] + stalled["stall_s"]))
        forked = fork(run, config, decided, move_ends, slo, tenant_slos, options, console or Console(quiet=True))
        table = table.drop(columns=forked.columns.drop("decision"), errors="ignore")
        table = table.merge(forked, on="decision", how="left")
    table["verdict"] = verdicts(table["fork_change"], options.tolerance)
    return table


def fork(run: Run, config: ExperimentConfig, decided: np.ndarray, move_ends: dict[int, float], slo: SLO,
         tenant_slos: dict[str, SLO], options: HarmOptions, console: Console) -> pd.DataFrame:
    from experiments.runs.runner import simulate_with
    from experiments.scoring.counterfactual import compare, fork_points, run_branches

    decided_at = run.meta.get("decided_at_s")
    factual = run
    if decided_at is None or len(decided_at) <= int(np.max(decided)):
        factual, sim = simulate_with(config)
        decided_at = sim.control.decided_at
        if len(factual.tokens) != len(run.tokens) or not np.allclose(factual.tokens["time_s"], run.tokens["time_s"]):
            console.print("[yellow]note: the replay differs from the run (another pdlab version?); "
                          "forks compare against the replay[/yellow]")
    rng = np.random.default_rng(options.seed)
    chosen = sorted(int(d) for d in rng.choice(decided, min(options.forks, len(decided)), replace=False))
    points = fork_points(factual, decided_at, chosen, options.horizon, move_ends)
    with console.status(f"forking {len(points)} decisions"):
        branches = run_branches(config, points, options.cap_s, options.jobs)
    missed = sum(not branch.reached for branch in branches)
    if missed:
        console.print(f"[yellow]note: {missed} of {len(branches)} forks did not meet their decision in the replay "
                      "(a run of another pdlab version?); they are left unjudged[/yellow]")
    return compare(factual, points, branches, slo, tenant_slos)


def harm_counts(run: Run, slo: SLO, tenant_slos: dict[str, SLO], forks: int) -> dict:
    """A run's moves, those that added visible idle, the harmful ones by attribution (per
    1,000 requests and as a share of the moves, with 95% Wilson intervals), and the
    verdicts of `forks` forked counterfactuals."""
    from experiments.scoring.harmreport import wilson

    table = analyse(run, slo, tenant_slos, HarmOptions(forks=forks))
    moves = table[table["kind"] != "rejection"]
    harmful, requests = int((moves["attributed_verdict"] == "harmful").sum()), len(run.requests)
    per_k, share = wilson(min(harmful, requests), requests), wilson(harmful, len(moves))
    counts = {"moves": int(len(moves)), "visible_harm": int((moves["visible_idle_s"] > 0).sum()),
              "attributed_harmful": harmful,
              "attributed_harmful_per_1k": 1000.0 * harmful / requests if requests else np.nan,
              "attributed_harmful_per_1k_low": 1000.0 * per_k[0] if per_k[0] is not None else np.nan,
              "attributed_harmful_per_1k_high": 1000.0 * per_k[1] if per_k[1] is not None else np.nan,
              "attributed_harmful_share_low": share[0] if share[0] is not None else np.nan,
              "attributed_harmful_share_high": share[1] if share[1] is not None else np.nan}
    if forks:
        counts.update({v: int((table["verdict"] == v).sum()) for v in ("harmful", "neutral", "helpful")})
    return counts
