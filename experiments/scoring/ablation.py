"""Class-level ablations (metrics.md, "Harm"): a config run over several seeds as it is and
with every router decision of some kinds vetoed (`cluster.core.setup.VETO_KINDS`; a
vetoed rejection is an admission). The two arms of a seed share its workload, so
each request's benefit is paired; the change (as run minus vetoed: positive means the
vetoed kind helps) is averaged per request, with a 95% interval from a two-level
bootstrap (seeds, then requests within them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.core.setup import Veto
from experiments.config.experiment import ExperimentConfig
from experiments.parallel import in_order
from experiments.scoring.metrics import run_slos, score
from router.registry import make_policy

RESAMPLES = 2000


@dataclass(frozen=True)
class Arm:
    seed: int
    vetoed: bool
    benefit: pd.Series
    """Per request id."""
    summary: dict
    events: pd.DataFrame
    rules: list[str]


def run_arm(config: ExperimentConfig, seed: int, kinds: frozenset[str]) -> Arm:
    from experiments.runs.runner import simulate

    config = config.model_copy(update={"seed": seed})
    run = simulate(config, Veto(kinds=kinds))
    slo, tenants = run_slos(run.meta)
    table, summary = score(run, slo, tenant_slos=tenants)
    return Arm(seed, bool(kinds), table.set_index("request_id")["benefit"], summary, run.events,
               run.meta["decision_rules"])


def _arm(args: tuple) -> Arm:
    return run_arm(*args)


def decisions_of(events: pd.DataFrame, kinds: frozenset[str], rules: list[str]) -> int:
    """The run's decisions of `kinds` (made, or vetoed); `rules`: the rule of each decision."""
    made = events[events["decision"] >= 0].drop_duplicates("decision")
    vetoed = made["kind"] == "vetoed"
    if vetoed.any():
        return int(vetoed.sum())
    action = made["kind"].map({"migrate_start": "migrate", "preempt": "preempt", "reject": "reject",
                               "preempt_abort": "preempt"})
    mode = np.where(action == "reject", "", made["detail"])
    rule = [rules[d] if d < len(rules) else "" for d in made["decision"]]
    veto = Veto(kinds=kinds)
    return int(sum(veto.covers(-1, a, m, r) for a, m, r in zip(action, mode, rule)))


def ablate(config: ExperimentConfig, kinds: frozenset[str], seeds: list[int], jobs: int = 1,
           bootstrap_seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Per seed the two arms' figures, and the paired change with its interval."""
    Veto(kinds=kinds).check_rules(type(make_policy(config.router.policy, config.router.params)))
    work = [(seed, k) for seed in seeds for k in (frozenset(), kinds)]
    if jobs > 1:
        arms = in_order(_arm, [(config, seed, k) for seed, k in work], jobs)
    else:
        arms = [run_arm(config, seed, k) for seed, k in work]
    rows, diffs = [], []
    for seed in seeds:
        plain, vetoed = (next(a for a in arms if a.seed == seed and a.vetoed == v) for v in (False, True))
        change = (plain.benefit - vetoed.benefit.reindex(plain.benefit.index)).to_numpy()
        diffs.append(change)
        rows.append({"seed": seed, "requests": len(change), "decisions": decisions_of(plain.events, kinds, plain.rules),
                     "vetoed": decisions_of(vetoed.events, kinds, vetoed.rules),
                     "benefit_change_per_request": float(change.mean()),
                     "smooth_goodput": plain.summary["smooth_goodput"],
                     "smooth_goodput_vetoed": vetoed.summary["smooth_goodput"],
                     "smooth_attainment": plain.summary["schemes"]["smooth"]["slo_attainment"],
                     "smooth_attainment_vetoed": vetoed.summary["schemes"]["smooth"]["slo_attainment"]})
    low, high = two_level_bootstrap(diffs, np.random.default_rng(bootstrap_seed))
    mean = float(np.mean([d.mean() for d in diffs]))
    verdict = "harmful" if high < 0 else "helpful" if low > 0 else "not distinguishable from none"
    return pd.DataFrame(rows), {"kinds": sorted(kinds), "seeds": seeds, "benefit_change_per_request": mean,
                                "ci95": [low, high], "verdict": verdict}


def two_level_bootstrap(samples: list[np.ndarray], rng: np.random.Generator,
                        resamples: int = RESAMPLES) -> tuple[float, float]:
    """The 95% percentile interval of the mean over groups of the group means, resampling
    groups and then the values within each chosen group."""
    means = np.empty(resamples)
    for b in range(resamples):
        groups = rng.integers(len(samples), size=len(samples))
        means[b] = np.mean([samples[g][rng.integers(len(samples[g]), size=len(samples[g]))].mean() for g in groups])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
