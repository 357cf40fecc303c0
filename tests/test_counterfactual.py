"""Forking the simulator at a decision, vetoed rejections, and the forked counterfactuals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cluster.core.setup import Veto
from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, simulate, simulate_with
from experiments.scoring.counterfactual import ForkPoint, benefits_at, compare, fork_points, run_branches
from experiments.scoring.metrics import run_slos, score
from experiments.workloads.workload import generate
from tests.test_moves import MigrateOnce  # noqa: F401  (registers the test policy)


def busy(policy: str, ttft: float = 1.0, **params) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": 2}], "kv_blocks": 900},
        "router": {"policy": policy, "tick_s": 0.25, "params": params},
        "workload": {"requests": 120, "arrival": {"process": "gamma", "rate": 6.0, "cv": 2.0},
                     "lengths": {"dist": "uniform", "prompt": [100, 1200], "output": [100, 600]}},
        "slo": {"ttft": ttft, "tbt": 0.05, "v": 0.05}})


@pytest.mark.parametrize("policy", ["smooth_goodput", "test_migrate_once", "andes"])
def test_a_fork_without_a_veto_goes_on_exactly_as_the_run(policy):
    config = busy(policy)
    whole = simulate(config)
    sim = Simulator(build_setup(config, generate(config.workload, config.seed)))
    sim.start()
    sim.advance(before=float(whole.requests["arrival_s"].median()))
    branch = sim.fork(Veto())
    for runner in (sim, branch):
        runner.advance()
    for record in (sim.close(), branch.close()):
        pd.testing.assert_frame_equal(record.events(), whole.events)
        pd.testing.assert_frame_equal(record.tokens, whole.tokens)
    assert (whole.events["decision"] >= 0).any()


def test_a_vetoed_rejection_is_replayed_as_an_admission():
    config = busy("classic_goodput", ttft=0.2, abandon=True)
    plain = simulate(config)
    rejected = plain.events[(plain.events["kind"] == "reject") & (plain.events["decision"] >= 0)]
    assert len(rejected) >= 3
    served = simulate(config, Veto(kinds=frozenset({"reject"})))
    assert not ((served.events["kind"] == "reject") & (served.events["decision"] >= 0)).any()
    finished = served.requests.set_index("request_id")["status"]
    assert (finished.loc[rejected["request_id"]] == "finished").all()
    one = int(rejected["decision"].iloc[0])
    single = simulate(config, Veto(frozenset({one})))
    request = int(rejected["request_id"].iloc[0])
    assert single.requests.set_index("request_id").loc[request, "status"] == "finished"


def test_veto_kinds_are_checked():
    with pytest.raises(ValueError, match="veto: expected kinds among .*got park"):
        Veto(kinds=frozenset({"park"}))


def test_benefit_as_of_a_time_counts_what_was_seen_by_then():
    requests = pd.DataFrame({"request_id": [0, 1], "arrival_s": [0.0, 1.0], "prompt_tokens": [5, 5],
                             "output_tokens": [3, 2], "status": ["finished", "finished"]})
    tokens = pd.DataFrame({"request_id": [0, 0, 0, 1, 1], "index": [1, 2, 3, 1, 2],
                           "time_s": [0.5, 0.6, 0.7, 1.5, 4.0]})
    slo = run_slos({"slo": {"v": 0.1, "alpha": 1.0}})[0]         # f = tokens: idle / V
    now = benefits_at(requests, tokens, 10.0, slo, {})
    assert now.loc[0] == pytest.approx(3 - 0.4 / 0.1)
    assert now.loc[1] == pytest.approx(2 - (3.0 - 0.2) / 0.1)
    early = benefits_at(requests, tokens, 2.0, slo, {})
    assert early.loc[0] == now.loc[0]
    assert early.loc[1] == pytest.approx(1 - ((2.0 - 1.0) - 0.1 * 2) / 0.1)      # one token, still waiting at 2 s


def test_forked_counterfactuals_reach_their_decisions_and_score_the_same_requests():
    config = busy("andes")
    run, sim = simulate_with(config)
    decisions = sorted(run.events.loc[run.events["decision"] >= 0, "decision"].unique())[:6]
    points = fork_points(run, sim.control.decided_at, decisions, horizon="request")
    assert [p.watch for p in points] == [(p.request_id,) for p in points]
    branches = run_branches(config, points)
    table = compare(run, points, branches, *run_slos(run.meta))
    assert table["fork_reached"].all() and (table["fork_horizon_s"] > 0).all()
    assert np.allclose(table["fork_change"], table["fork_change_own"] + table["fork_change_others"])


def test_a_fork_to_the_end_of_the_run_is_the_whole_run_replayed_with_the_veto():
    config = busy("andes")
    run, sim = simulate_with(config)
    decision = int(run.events.loc[run.events["decision"] >= 0, "decision"].iloc[3])
    point = fork_points(run, sim.control.decided_at, [decision], horizon="present")[0]
    everyone = ForkPoint(point.decision, point.request_id, point.time_s, tuple(run.requests["request_id"]),
                         float(run.meta["end_s"]), point.events_before)
    table = compare(run, [everyone], run_branches(config, [everyone], cap_s=1e9), *run_slos(run.meta))
    slo, tenants = run_slos(run.meta)
    vetoed = simulate(config, Veto(frozenset({decision})))
    assert (run.requests["status"] == "finished").all() and (vetoed.requests["status"] == "finished").all()

    def total(run):
        return score(run, slo, tenant_slos=tenants)[0]["benefit"].sum()
    assert table["fork_change"].iloc[0] == pytest.approx(total(run) - total(vetoed), abs=1e-6)
    assert table["fork_change"].iloc[0] != 0


def test_a_run_without_its_decision_times_is_replayed_for_them():
    from experiments.runs.runformat import Run
    from experiments.scoring.harm import HarmOptions, analyse

    run = simulate(busy("andes"))
    assert len(run.meta["decided_at_s"]) == int(run.events["decision"].max()) + 1
    older = Run(run.requests, run.tokens, run.events, {k: v for k, v in run.meta.items() if k != "decided_at_s"})
    slo, tenants = run_slos(run.meta)
    with_times = analyse(run, slo, tenants, HarmOptions(forks=4))
    replayed = analyse(older, slo, tenants, HarmOptions(forks=4))
    pd.testing.assert_series_equal(with_times["fork_change"], replayed["fork_change"])
    assert with_times["fork_change"].notna().sum() == 4


def test_classic_goodput_serves_every_request_when_no_instance_can_meet_the_tbt():
    config = busy("classic_goodput").model_copy(update={"slo": {"ttft": 1.0, "tbt": 0.015, "v": 0.05},
                                                       "horizon_s": 600.0})
    run = simulate(config)                             # a 16 ms step never meets 15 ms: everyone misses
    assert (run.requests["status"] == "finished").all()
    assert run.requests["output_tokens"].sum() == len(run.tokens)


def test_a_rule_veto_drops_only_that_rules_decisions():
    config = busy("smooth_goodput")
    plain = simulate(config)
    rules = plain.meta["decision_rules"]
    assert {"park_for_handoff", "park_for_return"} <= set(rules)
    vetoed = simulate(config, Veto(kinds=frozenset({"rule:park_for_return"})))
    events, kept = vetoed.events, vetoed.meta["decision_rules"]
    dropped = events.loc[events["kind"] == "vetoed", "decision"]
    made = events.loc[(events["kind"] == "preempt") & (events["decision"] >= 0), "decision"]
    assert len(dropped) and {kept[d] for d in dropped} == {"park_for_return"}
    assert {kept[d] for d in made} == {"park_for_handoff"}


def test_a_rule_veto_names_one_of_the_policys_rules():
    with pytest.raises(ValueError, match="veto rule:rescue: policy 'smooth_goodput' has no such rule; its rules: "
                                         "rule:spend_slack, rule:park_for_handoff, rule:park_for_return"):
        simulate(busy("smooth_goodput"), Veto(kinds=frozenset({"rule:rescue"})))
    with pytest.raises(ValueError, match="or rule:NAME, got rule:"):
        Veto(kinds=frozenset({"rule:"}))
