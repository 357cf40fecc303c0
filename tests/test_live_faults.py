"""Live faults in the middle of a move (issue 17): a worker killed while a hand-off's KV
is on its way (at either end), while a live migration copies its stages (its source),
and while a request is parked or being parked in its host memory. Every request still
ends exactly once, finished, with each of its tokens delivered once and in order, and
the workers left alive hold no block, on the GPU or in host memory, once it is over."""
from __future__ import annotations

import threading

import pytest
import ray

from cluster.live.driver import LiveOptions, LiveRuntime
from cluster.live.raycluster import start_workers, stop
from experiments.runs.runformat import Run, validate
from experiments.runs.runner import build_setup, live_options
from experiments.workloads.workload import generate
from router.actions import Dispatch, Handoff, Migrate, Preempt, Resume
from router.policy import Policy
from router.snapshot import DECODE, PREFILL
from tests.test_live import config, settled_stats


class KillMidMove(Policy):
    """Prefill on the first live prefill instance, decode on the first live decode one;
    the first request far enough along is moved (`move`: handoff, migrate or park) and
    `kill_s` seconds later (0: as the move is asked) the worker at `end` of that move
    (source or target) is killed.
    A parked request comes back to its home after `park_s`, if its home is alive."""
    name = "test-kill-mid-move"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, move: str, end: str, kill_s: float, park_s: float = 2.0) -> None:
        super().__init__(0)
        self.move, self.end, self.kill_s, self.park_s = move, end, kill_s, park_s
        self.actors: list = []
        self.moved: int | None = None
        self.parked_at: float | None = None
        self.killed: int | None = None

    def _kill_later(self, instance: int) -> None:
        self.killed = instance
        if self.kill_s == 0:
            ray.kill(self.actors[instance])
        else:
            threading.Timer(self.kill_s, lambda: ray.kill(self.actors[instance])).start()

    def decide(self, snapshot):
        prefill, decode = snapshot.instances.serving(PREFILL), snapshot.instances.serving(DECODE)
        actions = [Dispatch(r.id, prefill[0]) for r in snapshot.to_dispatch]
        for r in snapshot.to_hand_off:
            actions.append(Handoff(r.id, decode[0]))
            if self.move == "handoff" and self.moved is None:
                self.moved = r.id
                self._kill_later(r.instance if self.end == "source" else decode[0])
        for r in snapshot.preempted:
            if snapshot.now - self.parked_at >= self.park_s:
                actions.append(Resume(r.id, r.instance))
        if self.move in ("migrate", "park") and self.moved is None:
            for view in snapshot.running.get(decode[0], ()):
                if view.generated >= 10 and view.max_output_tokens - view.generated > 40:
                    self.moved, self.parked_at = view.id, snapshot.now
                    if self.move == "park":
                        actions.append(Preempt(view.id, "swap"))
                    else:
                        actions.append(Migrate(view.id, decode[1], "live"))
                    self._kill_later(decode[0] if self.end == "source" else decode[1])
                    break
        return actions


def run_with_fault(policy: KillMidMove, stage_overhead_s: float = 0.0):
    cfg = config(requests=12, rate=6.0, decode=2, router={"tick_s": 0.05},
                 cluster={"instances": [{"role": "prefill", "count": 2}, {"role": "decode", "count": 2}],
                          "kv_blocks": 4000},
                 migration={"stage_overhead_s": stage_overhead_s},
                 workload={"requests": 12, "arrival": {"process": "poisson", "rate": 6.0},
                           "lengths": {"dist": "uniform", "prompt": [100, 400], "output": [80, 140]}})
    setup = build_setup(cfg, generate(cfg.workload, cfg.seed))
    setup.policy = policy
    workers, _ = live_options(cfg)
    actors, groups = start_workers(setup.instances, [0] * len(setup.instances), workers)
    policy.actors = actors
    try:
        record = LiveRuntime(setup, actors, LiveOptions(2.0, transfer_timeout_s=5.0, stall_timeout_s=60.0)).run()
        alive = [i for i in range(len(actors)) if setup.table.alive[i]]
        stats = settled_stats([actors[i] for i in alive], alive)
    finally:
        stop(actors, groups)
    run = validate(Run(record.requests, record.tokens, record.events(), {"end_s": record.end_s}))
    return run, stats, setup


def assert_every_request_ended_once_with_its_tokens(run: Run) -> None:
    requests, events = run.requests, run.events
    assert (requests["status"] == "finished").all(), requests["status"].value_counts()
    assert (requests["output_tokens"] == requests["planned_output_tokens"]).all()
    ends = events[events["kind"].isin(["finish", "reject", "abort"])]
    assert sorted(ends["request_id"]) == sorted(requests["request_id"])
    for request_id, tokens in run.tokens.groupby("request_id"):
        assert list(tokens["index"]) == list(range(1, len(tokens) + 1)), request_id
        assert tokens["time_s"].is_monotonic_increasing, request_id


def fault_time(events) -> float:
    return float(events[(events["kind"] == "fault") & (events["request_id"] == -1)]["time_s"].iloc[0])


def assert_blocks_returned(stats: dict, setup) -> None:
    for index, s in stats.items():
        assert s["free_blocks"] == s["total_blocks"] and s["running"] == 0, (index, s)
        assert s["host_free_blocks"] == setup.instances[index].host_blocks, (index, s)


@pytest.mark.parametrize("end, kill_s", [("source", 0.0), ("target", 0.2)])
def test_a_worker_killed_during_a_hand_off_loses_no_request(local_ray, end, kill_s):
    policy = KillMidMove("handoff", end, kill_s)
    run, stats, setup = run_with_fault(policy, stage_overhead_s=1.5)
    assert_every_request_ended_once_with_its_tokens(run)
    events = run.events
    assert list(events[(events["kind"] == "fault") & (events["request_id"] == -1)]["instance"]) == [policy.killed]
    mine = events[events["request_id"] == policy.moved]
    assert (mine["kind"] == "transfer_abort").any() or (mine["kind"] == "fault").any(), mine
    assert not (events[events["kind"] == "finish"]["instance"] == policy.killed).any()
    assert_blocks_returned(stats, setup)


def test_a_migration_whose_source_dies_mid_stage_loses_no_request(local_ray):
    policy = KillMidMove("migrate", "source", kill_s=0.3)
    run, stats, setup = run_with_fault(policy, stage_overhead_s=2.0)
    assert_every_request_ended_once_with_its_tokens(run)
    events = run.events
    mine = events[events["request_id"] == policy.moved]
    assert (mine[mine["time_s"] < fault_time(events)]["kind"] == "migrate_stage").any(), mine
    assert not (mine["kind"] == "migrate_end").any()
    assert mine["detail"].astype(str).str.startswith("requeued").any(), mine
    assert_blocks_returned(stats, setup)


@pytest.mark.parametrize("kill_s", [0.01, 0.6], ids=["while-swapping-out", "while-parked"])
def test_a_worker_killed_with_a_request_parked_in_its_host_memory_loses_no_request(local_ray, kill_s):
    policy = KillMidMove("park", "source", kill_s=kill_s, park_s=2.0)
    run, stats, setup = run_with_fault(policy)
    assert_every_request_ended_once_with_its_tokens(run)
    events = run.events
    mine = events[events["request_id"] == policy.moved]
    assert mine["detail"].astype(str).str.startswith("requeued").any(), mine
    if kill_s > 0.1:
        assert (mine[mine["time_s"] < fault_time(events)]["kind"] == "preempt").any(), mine
    assert not ((mine["kind"] == "resume") & (mine["instance"] == policy.killed)).any()
    assert_blocks_returned(stats, setup)
