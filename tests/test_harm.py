"""The ledger of migrations and preemptions, their attribution, forked counterfactuals,
and the two agreeing on a scripted cluster with a known harmful and a known harmless move."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cluster.core.setup import Veto
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate
from experiments.runs.runner import simulate
from experiments.scoring.attribution import verdicts
from experiments.scoring.harm import HarmOptions, analyse
from experiments.scoring.harmreport import features, summary, wilson
from experiments.scoring.ledger import build_ledger
from experiments.scoring.metrics import run_slos
from router.slo import SLO
from tests.test_moves import MigrateOnce  # noqa: F401  (registers the test policy)


def test_stall_slack_and_visible_idle_of_a_preemption():
    slo = SLO(v=0.1, alpha=5)
    # 10 tokens by 0.5 s (reader busy until 1.0 s), preempted at 0.6 s, next token at 2.0 s
    times = list(np.linspace(0.05, 0.5, 10)) + [2.0, 2.05]
    requests = pd.DataFrame({"request_id": [0], "arrival_s": [0.0], "prompt_tokens": [10],
                             "output_tokens": [len(times)], "status": ["finished"]})
    tokens = pd.DataFrame({"request_id": 0, "index": np.arange(1, len(times) + 1), "time_s": times})
    events = pd.DataFrame({"time_s": [0.6], "kind": ["preempt"], "request_id": [0], "instance": [0], "peer": [-1],
                           "bytes": [0.0], "detail": ["recompute"], "decision": [3]})
    run = validate(Run(requests, tokens, events, {"end_s": 3.0}))
    table = build_ledger(run.requests, run.tokens, run.events, 3.0, {}, slo)
    row = table.iloc[0]
    assert row["decision"] == 3 and row["kind"] == "preemption" and row["mode"] == "recompute"
    assert row["stall_s"] == pytest.approx(1.4)
    assert row["slack_s"] == pytest.approx(1.0 + 0.1 - 0.6)        # u_10 = 1.0, +V, minus the stall start
    assert row["visible_idle_s"] == pytest.approx(1.4 - 0.5)
    assert row["benefit_change_est"] < 0


def test_verdicts_and_their_interval():
    assert list(verdicts(pd.Series([-5.0, 0.2, 7.0, np.nan]), 1.0)) == ["harmful", "neutral", "helpful",
                                                                         "not replayed"]
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (None, None)


def config(**router) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": 2}], "kv_blocks": 2000},
        "router": {"policy": "test_migrate_once", "tick_s": 0.5, **router},
        "workload": {"requests": 30, "arrival": {"process": "poisson", "rate": 4.0},
                     "lengths": {"dist": "uniform", "prompt": [100, 1500], "output": [100, 400]}}})


def test_a_vetoed_decision_is_not_applied_and_changes_nothing_before_it():
    plain = simulate(config())
    decisions = plain.events[plain.events["decision"] >= 0]
    first = int(decisions["decision"].min())
    vetoed = simulate(config(), veto=Veto(frozenset({first})))
    assert (vetoed.events["kind"] == "vetoed").sum() == 1
    cut = float(decisions.loc[decisions["decision"] == first, "time_s"].iloc[0])
    before = lambda run: run.tokens[run.tokens["time_s"] < cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(before(plain), before(vetoed))


def test_harm_command_forks_and_writes_its_report(tmp_path, pdlab):
    from experiments.runs.runformat import write_run

    folder = write_run(simulate(config()), tmp_path / "run")
    code, out, err = pdlab("harm", folder, "--forks", 4, "--jobs", 2)
    assert code == 0, err
    table = pd.read_csv(folder / "harm.csv")
    report = json.loads((folder / "harm.json").read_text())["moves"]
    assert (table["verdict"] != "not replayed").sum() == 4
    assert set(table["verdict"]) <= {"harmful", "neutral", "helpful", "not replayed"}
    assert set(table["attributed_verdict"]) <= {"harmful", "neutral", "helpful"}
    assert report["migration live"]["count"] == int((table["kind"] == "migration").sum())
    assert report["migration live"]["forked"]["judged"] == 4
    assert (folder / "harm-features.csv").exists() and (folder / "harm.png").exists()


def test_analyse_without_forks_attributes_every_move():
    run = simulate(config())
    table = analyse(run, SLO(), {}, HarmOptions(forks=0))
    assert len(table) and (table["verdict"] == "not replayed").all()
    assert table["attributed_change"].notna().all()
    assert np.allclose(table["attributed_change"], table["benefit_change_est"] + table["collateral"])


def scripted(mode: str, v: float) -> ExperimentConfig:
    """Three long prompts, each moved once from decode instance 1 to 2 at its first tick."""
    return ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": 2}]},
        "router": {"policy": "test_migrate_once", "tick_s": 0.5, "params": {"mode": mode}},
        "workload": {"requests": 3, "arrival": {"process": "constant", "rate": 0.5},
                     "lengths": {"dist": "fixed", "prompt": 8000, "output": 300}},
        "slo": {"v": v, "tbt": 0.1}})


def test_a_recompute_stall_beyond_the_readers_slack_is_harmful_by_both_methods():
    run = simulate(scripted("recompute", v=0.01))           # readers at 100 tokens/s: next to no slack
    table = analyse(run, *run_slos(run.meta), HarmOptions(forks=3))
    assert (table["stall_s"] > table["slack_s"] + 0.2).all()
    assert (table["attributed_verdict"] == "harmful").all() and (table["verdict"] == "harmful").all()
    assert (table["fork_change_own"] < -50).all() and (table["benefit_change_est"] < -50).all()
    later = table.iloc[1:]                                   # their re-prefills stall the requests already there
    assert (later["collateral_prefill"] < -50).all() and (later["fork_change_others"] < -50).all()
    whole = analyse(run, *run_slos(run.meta), HarmOptions(forks=3, horizon="request"))
    assert (whole["verdict"] == "harmful").all() and (whole["fork_horizon_s"] > table["fork_horizon_s"]).all()


def test_a_live_move_within_the_readers_slack_is_neutral_by_both_methods():
    run = simulate(scripted("live", v=0.2))                 # readers at 5 tokens/s: seconds of slack
    table = analyse(run, *run_slos(run.meta), HarmOptions(forks=3))
    assert (table["stall_s"] < table["slack_s"]).all() and (table["visible_idle_s"] == 0).all()
    assert (table["attributed_verdict"] == "neutral").all() and (table["verdict"] == "neutral").all()


def test_the_report_gives_shares_with_intervals_and_features():
    run = simulate(scripted("recompute", v=0.01))
    table = analyse(run, *run_slos(run.meta), HarmOptions(forks=3))
    report = summary(table, len(run.requests))["migration recompute"]
    assert report["attributed"]["harmful"]["count"] == 3 and report["forked"]["harmful"]["share"] == 1.0
    low, high = report["attributed"]["harmful"]["ci95"]
    assert 0.3 < low < 1.0 and high == 1.0
    assert report["agreement"] == {"compared": 3, "same_sign": 3, "share": 1.0, "ci95": list(wilson(3, 3)),
                                   "same_verdict": 3}
    assert report["harmful_per_1000_requests"]["value"] == 1000.0
    frame = features(table)
    assert set(frame["feature"]) == {"slack_s", "stall_s", "load", "kind"}
    assert frame.loc[frame["feature"] == "kind", "harmful"].sum() == 3


def test_vetoing_a_kind_over_seeds_is_paired_with_an_interval():
    from experiments.scoring.ablation import ablate, two_level_bootstrap

    table, result = ablate(scripted("recompute", v=0.01), frozenset({"migrate"}), [0, 1])
    assert list(table["seed"]) == [0, 1] and (table["decisions"] == 3).all() and (table["vetoed"] == 3).all()
    assert result["verdict"] == "harmful" and result["ci95"][1] < 0
    assert result["benefit_change_per_request"] == pytest.approx(table["benefit_change_per_request"].mean())
    in_two, _ = ablate(scripted("recompute", v=0.01), frozenset({"migrate"}), [0, 1], jobs=2)
    pd.testing.assert_frame_equal(in_two, table)
    _, harmless = ablate(scripted("live", v=0.2), frozenset({"migrate:live"}), [0])
    assert harmless["ci95"] == [0.0, 0.0] and harmless["verdict"] == "not distinguishable from none"
    low, high = two_level_bootstrap([np.array([1.0, 2.0, 3.0]), np.array([5.0])], np.random.default_rng(0))
    assert 1.0 <= low < high <= 5.0


def test_ablate_command_writes_its_table(tmp_path, pdlab):
    path = tmp_path / "scripted.yaml"
    path.write_text(json.dumps(scripted("recompute", v=0.01).model_dump(mode="json")))
    code, out, err = pdlab("ablate", path, "--veto", "migrate", "--seeds", 0, "--out", tmp_path / "out")
    assert code == 0, err
    assert "the decisions are harmful" in out
    assert json.loads((tmp_path / "out" / "ablation.json").read_text())["kinds"] == ["migrate"]
    with pytest.raises(SystemExit):
        pdlab("ablate", path, "--veto", "park")


def test_ablation_and_report_split_by_the_policys_rule():
    from experiments.scoring.ablation import ablate
    from tests.test_counterfactual import busy

    table, result = ablate(busy("classic_goodput", ttft=0.2, abandon=True), frozenset({"rule:abandon_new"}), [0])
    assert table["decisions"].iloc[0] == 4 and table["vetoed"].iloc[0] >= 4
    assert result["kinds"] == ["rule:abandon_new"]
    with pytest.raises(ValueError, match="has no such rule"):
        ablate(busy("andes"), frozenset({"rule:abandon_new"}), [0])
    run = simulate(busy("smooth_goodput"))
    moves = analyse(run, *run_slos(run.meta), HarmOptions(forks=0))
    by_router = moves[moves["decision"] >= 0]
    assert set(by_router["rule"]) == {"park_for_handoff", "park_for_return"}
    assert set(moves.loc[moves["decision"] < 0, "rule"]) <= {""}
    report = summary(moves, len(run.requests))
    assert report["preemption swap (park_for_return)"]["count"] == int((by_router["rule"] == "park_for_return").sum())
    rules = features(moves).query("feature == 'rule'")
    assert set(rules["bin"]) == {"park_for_handoff", "park_for_return"}
