"""One control plane for both runtimes: a scripted sequence of every action (dispatch,
hand-off, live and recompute migration, swap and recompute preemption, resume,
reject, a vetoed move, a failed hand-off) gives the same events, the same ledger and
the same final block counts in the simulator and on a live Ray cluster; the router's
victim rule runs live."""
from __future__ import annotations

import pandas as pd
import pytest
import ray

from cluster.core.control import ControlPlane
from cluster.core.runtime import Runtime
from cluster.core.setup import Veto
from cluster.live.driver import LiveRuntime
from cluster.live.raycluster import start_workers, stop
from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, live_options
from experiments.scoring.ledger import build_ledger
from experiments.workloads.workload import generate
from router.actions import Dispatch, Handoff, Migrate, Preempt, Reject, Resume
from router.policy import Policy
from router.slo import SLO
from tests.test_live import settled_stats

PREFILL, FIRST, SECOND = 0, 1, 2
MOVES = {1: Migrate(1, SECOND, "live"), 2: Migrate(2, SECOND, "recompute"), 3: Preempt(3, "swap"),
         4: Preempt(4, "recompute"), 6: Migrate(6, SECOND, "live")}
"""Request -> the move made once it has 10 tokens."""
VETOED, REJECTED, FAILED_HANDOFF = 5, 5, 7
"""A decision number, two request ids."""
"""Decisions are numbered as made: the moves of requests 1 to 4, request 5's rejection (4), request 6's
migration (5, vetoed); request 7's first hand-off fails."""


class Script(Policy):
    name = "test-script"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.done: set[int] = set()

    def decide(self, snapshot):
        actions = [Reject(r.id, "scripted") if r.id == REJECTED else Dispatch(r.id, PREFILL)
                   for r in snapshot.to_dispatch]
        actions += [Handoff(r.id, FIRST) for r in snapshot.to_hand_off]
        actions += [Resume(r.id, FIRST if r.id == 3 else PREFILL) for r in snapshot.preempted]
        for view in snapshot.running.get(FIRST, ()):
            if view.id in MOVES and view.id not in self.done and view.generated >= 10:
                self.done.add(view.id)
                actions.append(MOVES[view.id])
        return actions


def scripted_config(runtime: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "runtime": runtime, "seed": 0,
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": 2}], "kv_blocks": 4000},
        "router": {"tick_s": 0.1},
        "migration": {"max_stages": 2},
        "ray": {"speedup": 2.0, "worker_cpus": 0.1},
        "workload": {"requests": 8, "arrival": {"process": "constant", "rate": 1.0},
                     "lengths": {"dist": "fixed", "prompt": 200, "output": 60}},
        "slo": {"ttft": 1.0, "tbt": 0.1}})


def scripted_setup(runtime: str):
    config = scripted_config(runtime)
    setup = build_setup(config, generate(config.workload, config.seed), veto=Veto(frozenset({VETOED})))
    setup.policy = Script()
    return setup


def simulated():
    simulator = Simulator(scripted_setup("sim"))
    simulator.corrupt_next_copy(FAILED_HANDOFF)
    record = simulator.run()
    blocks = [(i.blocks.free, i.blocks.total) for i in simulator.instances]
    return record, blocks


def live():
    setup = scripted_setup("ray")
    workers, options = live_options(scripted_config("ray"))
    actors, groups = start_workers(setup.instances, [0] * len(setup.instances), workers)
    try:
        ray.get(actors[PREFILL].corrupt_next_export.remote(FAILED_HANDOFF))
        record = LiveRuntime(setup, actors, options).run()
        stats = settled_stats(actors, list(range(len(actors))))
    finally:
        stop(actors, groups)
    return record, [(s["free_blocks"], s["total_blocks"]) for s in stats.values()]


def per_request(events: pd.DataFrame) -> dict[int, list[tuple]]:
    """Each request's events in order, without their times."""
    rows = events[events["request_id"] >= 0]
    return {int(r): [tuple(row) for row in group[["kind", "instance", "peer", "detail", "decision"]]
                     .itertuples(index=False)] for r, group in rows.groupby("request_id", sort=True)}


def ledger(record) -> pd.DataFrame:
    slo = SLO(ttft=1.0, tbt=0.1)
    table = build_ledger(record.requests, record.tokens, record.events(), record.end_s, {}, slo)
    return table[["decision", "request_id", "kind", "mode", "source", "destination", "outcome"]]


def test_a_scripted_run_is_the_same_in_the_simulator_and_live(local_ray):
    (sim, sim_blocks), (real, live_blocks) = simulated(), live()
    events = per_request(sim.events())
    assert events == per_request(real.events())
    kinds = sim.events()["kind"].value_counts()
    for kind in ("dispatch", "transfer_start", "transfer_end", "transfer_abort", "migrate_start", "migrate_stage",
                 "migrate_end", "preempt", "resume", "reject", "vetoed", "finish"):
        assert kinds.get(kind, 0) > 0, kind
    assert events[REJECTED] == [("arrive", -1, -1, "", -1), ("reject", -1, -1, "scripted", 4)]
    assert ("transfer_abort", PREFILL, FIRST, "checksum", -1) in events[FAILED_HANDOFF]
    assert ("vetoed", -1, -1, "Migrate", VETOED) in events[6]
    assert ("migrate_end", FIRST, SECOND, "", -1) in events[1] and ("migrate_end", FIRST, SECOND, "", -1) in events[2]
    assert ("resume", FIRST, -1, "", -1) in events[3] and ("resume", PREFILL, -1, "", -1) in events[4]
    pd.testing.assert_frame_equal(ledger(sim), ledger(real))
    assert list(ledger(sim)["decision"]) == [0, 1, 2, 3]
    assert sim_blocks == live_blocks and all(free == total for free, total in sim_blocks)
    for record in (sim, real):
        finished = record.requests[record.requests["status"] == "finished"]
        assert len(finished) == 7 and (finished["output_tokens"] == 60).all()


class EarliestFirst(Policy):
    """Everything on one colocated instance; out of KV, preempt the earliest arrival
    (vLLM's own choice is the latest)."""
    name = "test-earliest-victim"
    events = frozenset({"tick"})
    needs_running = True

    def decide(self, snapshot):
        return [Dispatch(r.id, 0) for r in snapshot.to_dispatch] + [Handoff(r.id, 0) for r in snapshot.to_hand_off]

    def choose_victim(self, snapshot, instance):
        running = snapshot.running.get(instance, ())
        return min(running, key=lambda r: (r.arrival_s, r.id)).id if running else None


@pytest.mark.parametrize("runtime", ["sim", "ray"])
def test_the_router_chooses_the_engines_victim_in_both_runtimes(local_ray, runtime):
    config = ExperimentConfig.model_validate({
        "runtime": runtime,
        "cluster": {"instances": [{"role": "colocated"}], "kv_blocks": 40},
        "router": {"tick_s": 0.1}, "ray": {"speedup": 4.0, "worker_cpus": 0.1},
        "workload": {"requests": 3, "arrival": {"process": "constant", "rate": 20.0},
                     "lengths": {"dist": "fixed", "prompt": 100, "output": 300}}})
    setup = build_setup(config, generate(config.workload, config.seed))
    setup.policy = EarliestFirst()
    if runtime == "sim":
        record = Simulator(setup).run()
    else:
        actors, groups = start_workers(setup.instances, [0], live_options(config)[0])
        try:
            record = LiveRuntime(setup, actors, live_options(config)[1]).run()
        finally:
            stop(actors, groups)
    events = record.events()
    preempted = events[(events["kind"] == "preempt")]
    assert len(preempted) and preempted["request_id"].iloc[0] == 0
    assert (record.requests["status"] == "finished").all()


class Hooks(Runtime):
    """A runtime that only remembers what the control plane asked of it: the tests below
    answer its KV copies and detaches by hand, in orders a live cluster can produce."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.copies: list[int] = []
        self.decoding: dict[int, set] = {}

    def now(self) -> float:
        return 0.0

    def busy(self):
        return []

    def context_of(self, request) -> int:
        return request.prompt

    def reserve(self, request, instance, blocks) -> bool:
        self.calls.append(("reserve", request.id, instance, blocks))
        return True

    def copy_kv(self, request, source, target, first, tokens, final, move) -> None:
        self.copies.append(move)

    def place(self, request, state, instance) -> None:
        request.state, request.instance = state, instance


def _recorded(hook: str):
    return lambda self, request, *args: self.calls.append((hook, request.id, *args))


for _hook in ("enqueue", "decode_here", "cancel", "admit", "release", "preempt", "detach", "reattach",
              "resume", "drop"):
    setattr(Hooks, _hook, _recorded(_hook))


class Hand(Policy):
    """Hands every prefilled request to instance 1 (a decode instance)."""
    name = "test-hand"

    def decide(self, snapshot):
        return [Handoff(r.id, 1) for r in snapshot.to_hand_off]


def plane(roles=("prefill", "decode", "decode")):
    config = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": r} for r in roles], "kv_blocks": 100},
        "workload": {"requests": 2, "arrival": {"process": "constant", "rate": 1.0},
                     "lengths": {"dist": "fixed", "prompt": 50, "output": 20}}})
    setup = build_setup(config, generate(config.workload, 0))
    setup.policy = Hand()
    hooks = Hooks()
    control = ControlPlane(setup, hooks)
    request = control.requests[0]
    request.state, request.instance = "handoff", 0
    return control, hooks, request


def kinds(control) -> list[str]:
    return control.record.kinds()


def test_an_answer_to_a_copy_of_an_ended_move_is_not_taken_for_a_later_one():
    control, hooks, request = plane()
    control.prefilled(request, 0)
    control.decide("prefill_done")
    first = hooks.copies[-1]
    control.requeue(request, "test")
    request.state, request.instance = "handoff", 0
    control.prefilled(request, 0)
    control.decide("prefill_done")
    second = hooks.copies[-1]
    control.copied(request.id, first)
    assert "transfer_end" not in kinds(control)
    control.copied(request.id, second)
    assert kinds(control).count("transfer_end") == 1
    control.copied(request.id, second)
    assert kinds(control).count("transfer_end") == 1


def test_a_hand_off_that_keeps_failing_is_prefilled_again():
    control, hooks, request = plane()
    control.prefilled(request, 0)
    control.decide("prefill_done")
    for _ in range(3):
        control.copied(request.id, hooks.copies[-1], "transport")
    assert kinds(control).count("transfer_abort") == 3
    assert request.id in control.to_dispatch and ("drop", request.id, 0) in hooks.calls
    assert [c for c in hooks.calls if c[0] == "cancel"] == [("cancel", request.id, 1, 4)] * 3


def test_requests_no_instance_can_hand_off_to_are_rejected_and_dropped_where_they_are():
    control, hooks, request = plane(("prefill", "decode"))
    control.prefilled(request, 0)
    control.table.set_alive(1, False)
    control.decide("tick")
    assert request.state == "rejected" and ("drop", request.id, 0) in hooks.calls


def test_a_request_detached_for_a_move_that_was_aborted_decodes_again():
    control, hooks, request = plane()
    request.state, request.instance = "decoding", 1
    control.apply(Migrate(request.id, 2, "live"))
    control.moves.live[request.id].stage = control.setup.cost.max_stages - 1
    control.moves.copied(request, hooks.copies[-1], "")
    assert ("detach", request.id, True) in hooks.calls
    control.fault(2, "test")
    assert "migrate_abort" in kinds(control) and ("reattach", request.id, 1) not in hooks.calls
    control.detach_done(request.id, 60)
    assert ("reattach", request.id, 1) in hooks.calls
