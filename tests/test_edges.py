"""Edge cases a review found: the clock stopping mid-segment, views taken mid-segment,
chunked prefill at a zero watermark, swaps across idle time, the ledger's bytes and
the cool-down window."""
from __future__ import annotations

import pandas as pd
import pytest

from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate
from experiments.runs.runner import build_setup, simulate
from experiments.scoring.ledger import build_ledger
from experiments.scoring.metrics import Window, score
from experiments.workloads.workload import generate
from router.actions import Preempt, Resume
from router.policies.round_robin import RoundRobin
from router.slo import SLO
from tests.test_simulator import CheckedSimulator


def config(**sections) -> ExperimentConfig:
    base = {"cluster": {"instances": [{"role": "colocated"}]},
            "workload": {"requests": 2, "arrival": {"process": "constant", "rate": 20.0},
                         "lengths": {"dist": "fixed", "prompt": 100, "output": 3000}}}
    base.update(sections)
    return ExperimentConfig.model_validate(base)


def test_the_clock_stopping_keeps_every_token_delivered_by_then():
    full = simulate(config())
    cut = simulate(config(horizon_s=20.0))
    by_then = full.tokens[full.tokens["time_s"] <= 20.0].groupby("request_id").size()
    assert cut.tokens.groupby("request_id").size().equals(by_then)
    assert set(cut.requests["status"]) == {"unfinished"} and cut.end_s == 20.0


def test_requests_arriving_after_the_clock_stops_are_not_in_the_run():
    cfg = config(horizon_s=1.0, workload={"requests": 100, "arrival": {"process": "constant", "rate": 20.0},
                                          "lengths": {"dist": "fixed", "prompt": 100, "output": 5}})
    run = simulate(cfg)
    assert len(run.requests) == 21 and (run.requests["arrival_s"] <= 1.0).all()


class Spy(RoundRobin):
    name = ""
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self) -> None:
        super().__init__(0)
        self.seen = []

    def decide(self, snapshot):
        for views in snapshot.running.values():
            self.seen += [(snapshot.now, v.id, v.generated) for v in views]
        return super().decide(snapshot)


def test_views_count_the_steps_of_the_segment_in_flight():
    cfg = config(router={"policy": "round_robin", "tick_s": 0.5})
    plan = build_setup(cfg, generate(cfg.workload, 0))
    spy = plan.policy = Spy()
    record = Simulator(plan).run()
    tokens = record.tokens
    assert spy.seen
    for now, request, generated in spy.seen:
        assert generated == int(((tokens["request_id"] == request) & (tokens["time_s"] <= now)).sum())


def test_chunked_prefill_never_takes_the_blocks_decodes_need():
    cfg = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "colocated"}], "kv_blocks": 300,
                    "scheduler": {"chunked_prefill": True, "max_num_batched_tokens": 512, "watermark": 0.0}},
        "workload": {"requests": 120, "arrival": {"process": "poisson", "rate": 8.0},
                     "lengths": {"dist": "uniform", "prompt": [50, 900], "output": [50, 400]}}})
    record = CheckedSimulator(build_setup(cfg, generate(cfg.workload, 0))).run()
    assert (record.requests["status"] == "finished").all()


class SwapAndBack(RoundRobin):
    name = ""
    events = frozenset({"tick"})
    needs_running = True

    def decide(self, snapshot):
        actions = super().decide(snapshot)
        if snapshot.now == pytest.approx(1.0):
            actions += [Preempt(v.id, "swap") for views in snapshot.running.values() for v in views]
        if snapshot.now == pytest.approx(3.0):
            actions += [Resume(v.id, 0) for v in snapshot.preempted]
        return actions


def test_a_swap_out_done_while_idle_is_not_paid_again():
    cfg = config(router={"policy": "round_robin", "tick_s": 1.0},
                 workload={"requests": 1, "arrival": {"process": "constant", "rate": 1.0},
                           "lengths": {"dist": "fixed", "prompt": 4000, "output": 400}})
    plan = build_setup(cfg, generate(cfg.workload, 0))
    plan.policy = SwapAndBack(0)
    simulator = Simulator(plan)
    record = simulator.run()
    instance = simulator.instances[0]
    swap_s = record.events().query("kind == 'preempt'")["bytes"].iloc[0] / instance.spec.swap_bandwidth
    first_after = record.tokens[record.tokens["time_s"] > 3.0]["time_s"].iloc[0]
    assert first_after - 3.0 == pytest.approx(swap_s + instance.perf.decode_time(1, 4000 + 100), rel=0.02)


def test_each_ledger_row_counts_only_its_own_bytes():
    events = pd.DataFrame({
        "time_s": [1.0, 1.1, 1.2, 1.3, 2.0, 2.1, 2.2], "request_id": [0] * 7,
        "kind": ["migrate_start", "migrate_stage", "migrate_stage", "migrate_end",
                 "migrate_start", "migrate_stage", "migrate_end"],
        "instance": [1] * 7, "peer": [2] * 7, "bytes": [0, 100, 10, 0, 0, 500, 0],
        "detail": ["live", "", "", "", "live", "", ""], "decision": [0, -1, -1, -1, 1, -1, -1]})
    requests = pd.DataFrame({"request_id": [0], "arrival_s": [0.0], "prompt_tokens": [5], "output_tokens": [3],
                             "status": ["finished"]})
    tokens = pd.DataFrame({"request_id": [0, 0, 0], "index": [1, 2, 3], "time_s": [0.5, 1.25, 2.25]})
    run = validate(Run(requests, tokens, events, {"end_s": 3.0}))
    ledger = build_ledger(run.requests, run.tokens, run.events, 3.0, {}, SLO())
    assert list(ledger["bytes"]) == [110.0, 500.0]
    assert list(ledger["stall_start_s"]) == [1.2, 2.1]


def test_a_cool_down_keeps_the_rate_of_a_steady_stream():
    times = [0.1 * k for k in range(1, 101)]
    requests = pd.DataFrame({"request_id": range(100), "arrival_s": [t - 0.05 for t in times],
                             "prompt_tokens": 1, "output_tokens": 1, "status": "finished"})
    tokens = pd.DataFrame({"request_id": range(100), "index": 1, "time_s": times})
    run = validate(Run(requests, tokens, meta={"end_s": 10.0}))
    plain = score(run)[1]["throughput_tokens_per_s"]
    cooled = score(run, window=Window(cooldown_s=3.0))[1]["throughput_tokens_per_s"]
    assert cooled == pytest.approx(plain, rel=0.03)
