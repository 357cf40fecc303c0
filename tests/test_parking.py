"""Parking (issue 13): host memory as a finite resource, the router's swaps copied over
PCIe while the instance keeps stepping, and the smooth router spending reading slack
on decode KV: a hand-off that waits for KV gets it from a request far ahead of its
reader, which is back before its reader runs dry."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.core.hostlink import HostLink
from cluster.core.request import Request
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, simulate
from experiments.workloads.workload import generate
from router.actions import Preempt, Resume
from router.registry import make_policy
from tests.test_edges import SwapAndBack
from tests.test_simulator import CheckedSimulator

V = 0.2


def config(park: bool, **cluster) -> ExperimentConfig:
    """1 prefill + 1 decode instance whose KV holds two of these requests, not three;
    the third arrives while the first two decode, far ahead of their slow readers."""
    return ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}], "kv_blocks": 190, **cluster},
        "router": {"policy": "smooth_goodput", "tick_s": 0.25, "params": {"park": park}},
        "workload": {"requests": 3, "arrival": {"process": "constant", "rate": 2.0},
                     "lengths": {"dist": "fixed", "prompt": 1000, "output": 400}},
        "slo": {"v": V, "l": 1.0}})


def idle_s(run) -> dict[int, float]:
    tokens = run.tokens.merge(run.requests[["request_id", "arrival_s"]])
    late = tokens["time_s"] - tokens["arrival_s"] - V * tokens["index"]
    return late.groupby(tokens["request_id"]).max().clip(lower=0).to_dict()


def checked(cfg: ExperimentConfig, policy=None) -> CheckedSimulator:
    setup = build_setup(cfg, generate(cfg.workload, cfg.seed))
    if policy is not None:
        setup.policy = policy
    simulator = CheckedSimulator(setup)
    simulator.record_ = simulator.run()
    return simulator


def test_without_parking_the_third_reader_idles_for_seconds():
    idle = idle_s(simulate(config(park=False)))
    assert idle[2] > 3.0 and idle[0] == idle[1] == 0.0


def test_parking_admits_the_waiting_hand_off_and_no_reader_idles():
    simulator = checked(config(park=True))
    run = simulator.record_
    events = run.events()
    parks = events[(events["kind"] == "preempt") & (events["detail"] == "swap")]
    assert len(parks) >= 1 and set(events[events["kind"] == "resume"]["request_id"]) == set(parks["request_id"])
    assert events[events["kind"] == "transfer_start"]["time_s"].max() < parks["time_s"].min() + 0.1
    assert max(idle_s(run).values()) == 0.0
    assert (run.requests["output_tokens"] == 400).all() and set(run.requests["status"]) == {"finished"}
    decode = simulator.instances[1]
    assert decode.blocks.free == decode.blocks.total and decode.host.free == decode.spec.host_blocks


def test_a_parked_request_returns_before_its_reader_runs_dry():
    run = simulate(config(park=True))
    events, tokens = run.events, run.tokens
    for request in events[events["kind"] == "resume"]["request_id"]:
        mine = tokens[tokens["request_id"] == request]
        resumed = events[(events["kind"] == "resume") & (events["request_id"] == request)]["time_s"].iloc[0]
        before = mine[mine["time_s"] <= resumed]
        read_until = mine["time_s"].iloc[0] - mine["index"].iloc[0] * V + V * (len(before) + 1)
        after = mine[mine["time_s"] > resumed]["time_s"].iloc[0]
        assert after <= read_until


def test_no_room_in_host_memory_means_no_park():
    run = simulate(config(park=True, host_kv_blocks=10))
    assert not (run.events["kind"] == "preempt").any()
    assert idle_s(run)[2] > 3.0


def test_a_swap_that_does_not_fit_host_memory_is_given_up_and_the_request_carries_on():
    cfg = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "colocated"}], "host_kv_blocks": 10},
        "router": {"policy": "round_robin", "tick_s": 1.0},
        "workload": {"requests": 1, "arrival": {"process": "constant", "rate": 1.0},
                     "lengths": {"dist": "fixed", "prompt": 4000, "output": 400}}})
    simulator = checked(cfg, SwapAndBack(0))
    events = simulator.record_.events()
    refused = events[events["kind"] == "preempt_abort"]
    assert list(refused["detail"]) == ["host memory full"] and list(refused["decision"]) == [0]
    assert not (events["kind"] == "preempt").any()
    assert simulator.record_.requests["output_tokens"].tolist() == [400]
    instance = simulator.instances[0]
    assert instance.blocks.free == instance.blocks.total and instance.host.free == 10


def test_a_swap_out_overlaps_the_steps_of_the_others():
    """Two requests decode; one is parked: the other's tokens keep their pace through the copy."""
    class ParkOne(SwapAndBack):
        def decide(self, snapshot):
            actions = super(SwapAndBack, self).decide(snapshot)
            if snapshot.now == pytest.approx(1.0):
                table = next(iter(snapshot.running.values()))
                actions.append(Preempt(int(table.id.max()), "swap"))
            if snapshot.now == pytest.approx(3.0):
                actions += [Resume(v.id, v.instance) for v in snapshot.preempted]
            return actions

    cfg = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "colocated"}]}, "router": {"policy": "round_robin", "tick_s": 1.0},
        "workload": {"requests": 2, "arrival": {"process": "constant", "rate": 20.0},
                     "lengths": {"dist": "fixed", "prompt": 4000, "output": 3000}}})
    simulator = checked(cfg, ParkOne(0))
    run = simulator.record_
    kept = run.tokens[run.tokens["request_id"] == 0]["time_s"].to_numpy()
    gaps = kept[1:] - kept[:-1]
    around = gaps[(kept[1:] > 1.0) & (kept[1:] < 1.2)]
    swap_s = run.events().query("kind == 'preempt'")["bytes"].iloc[0] / simulator.instances[0].spec.swap_bandwidth
    step_s = float(np.median(gaps[kept[1:] < 1.0]))
    assert len(around) and around.max() < step_s + swap_s / 2       # a blocking copy: one gap of step + swap
    assert run.requests["output_tokens"].tolist() == [3000, 3000]


def test_host_link_copies_one_after_another_and_settles_in_order():
    link = HostLink(seconds_per_block=0.01, host_blocks=100)
    first, second = Request(0, "", 0.0, 10, 10, blocks=30), Request(1, "", 0.0, 10, 10, blocks=20)
    link.store(first, now=1.0)
    link.store(second, now=1.0)
    assert link.free == 50 and link.leaving_blocks == 50 and link.next_done() == pytest.approx(1.3)
    assert link.settle(1.31) == (30, []) and link.next_done() == pytest.approx(1.5)
    link.load(first, now=1.4)
    assert link.free == 80 and link.settle(1.6) == (20, []) and link.settle(1.8)[1] == [first]
    link.load(second, now=2.0)
    assert link.forget(second) and not link.returning and not link.forget(second)


@pytest.mark.parametrize("key, value, expected", [
    ("park_margin_s", -1.0, "park_margin_s: expected a number >= 0"),
    ("min_park_s", -0.5, "min_park_s: expected a number >= 0"),
    ("parks_per_decision", 0, "parks_per_decision: expected an integer >= 1")])
def test_bad_parking_parameters_are_named(key, value, expected):
    with pytest.raises(ValueError, match=expected):
        make_policy("smooth_goodput", {"park": True, key: value})


def test_parking_works_the_same_way_on_live_workers(local_ray):
    from cluster.live.driver import LiveRuntime
    from cluster.live.raycluster import start_workers, stop
    from experiments.runs.runner import live_options
    from tests.test_live import settled_stats

    cfg = config(park=True).model_copy(update={"runtime": "ray"})
    cfg = ExperimentConfig.model_validate({**cfg.model_dump(), "ray": {"speedup": 2.0, "worker_cpus": 0.1}})
    setup = build_setup(cfg, generate(cfg.workload, cfg.seed))
    workers, options = live_options(cfg)
    actors, groups = start_workers(setup.instances, [0] * len(setup.instances), workers)
    try:
        record = LiveRuntime(setup, actors, options).run()
        stats = settled_stats(actors, [0, 1])
    finally:
        stop(actors, groups)
    events = record.events()
    parks = events[(events["kind"] == "preempt") & (events["detail"] == "swap")]
    assert len(parks) >= 1 and set(events[events["kind"] == "resume"]["request_id"]) == set(parks["request_id"])
    assert (record.requests["output_tokens"] == 400).all() and set(record.requests["status"]) == {"finished"}
    assert idle_s(record)[2] < 1.0
    assert all(s["free_blocks"] == s["total_blocks"] for s in stats.values())
    assert stats[1]["host_free_blocks"] == setup.instances[1].host_blocks
