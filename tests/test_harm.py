"""The ledger of migrations and preemptions, and counterfactual replays."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cluster.core.setup import Veto
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate
from experiments.runs.runner import simulate
from experiments.scoring.harm import analyse, classify
from experiments.scoring.ledger import build_ledger
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


def test_classify():
    assert [classify(c) for c in (-5.0, 0.2, 7.0, np.nan)] == ["harmful", "neutral", "helpful", "not replayed"]


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


def test_harm_command_replays_and_writes_its_report(tmp_path, pdlab):
    from experiments.runs.runformat import write_run

    folder = write_run(simulate(config()), tmp_path / "run")
    code, out, err = pdlab("harm", folder, "--replays", 3)
    assert code == 0, err
    table = pd.read_csv(folder / "harm.csv")
    report = json.loads((folder / "harm.json").read_text())
    assert (table["verdict"] != "not replayed").sum() >= 3
    assert set(table["verdict"]) <= {"harmful", "neutral", "helpful", "not replayed"}
    assert report["migration live"]["count"] == int((table["kind"] == "migration").sum())


def test_analyse_without_replays_keeps_the_estimates():
    run = simulate(config())
    table = analyse(run, SLO(), {}, replays=0)
    assert len(table) and (table["verdict"] == "not replayed").all()
    assert set(table["verdict_est"]) <= {"harmful", "neutral"}
