"""The live runtime on a local Ray: emulated workers serve runs that agree with the
simulator; a worker killed mid-run loses no request; live and recompute migrations,
preemptions and resumes asked by the router complete and free every block."""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import ray

from cluster.hardware.noise import StepNoise, noise_as_mapping
from cluster.live.driver import LiveOptions, LiveRuntime
from cluster.live.raycluster import WorkerOptions, _warn_if_niced, start_workers, stop
from experiments.calibration.noise import dispatch_extra_s, fit_seconds, handoff_extra_s
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate
from experiments.runs.runner import build_setup, live_options, run_config
from experiments.scoring.metrics import score
from experiments.workloads.workload import generate
from router.actions import Dispatch, Handoff, Migrate, Preempt, Resume
from router.policy import Policy
from router.slo import SLO
from router.snapshot import DECODE, PREFILL


def config(requests: int = 30, rate: float = 5.0, decode: int = 1, speedup: float = 2.0, **changes) -> ExperimentConfig:
    data = {"runtime": "ray", "seed": 1,
            "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": decode}], "kv_blocks": 4000},
            "ray": {"speedup": speedup, "worker_cpus": 0.1},
            "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": rate},
                         "lengths": {"dist": "uniform", "prompt": [50, 800], "output": [20, 120]}},
            "slo": {"ttft": 1.0, "tbt": 0.1}}
    data.update(changes)
    return ExperimentConfig.model_validate(data)


def run_live(cfg: ExperimentConfig, policy: Policy | None = None, kill: tuple[float, int] | None = None,
             settle_s: float = 20.0):
    """A live run; `kill` = (wall seconds, instance) kills that worker mid-run. Returns
    the run and the stats of the workers left alive at its end, once their blocks are
    free or after `settle_s`."""
    plan = build_setup(cfg, generate(cfg.workload, cfg.seed))
    if policy is not None:
        plan.policy = policy
    workers, options = live_options(cfg)
    actors, groups = start_workers(plan.instances, [0] * len(plan.instances), workers)
    if kill:
        threading.Timer(kill[0], lambda: ray.kill(actors[kill[1]])).start()
    try:
        options = dataclasses.replace(options, transfer_timeout_s=10.0, stall_timeout_s=60.0, report_batch_s=0.0)
        record = LiveRuntime(plan, actors, options).run()
        alive = [i for i in range(len(actors)) if plan.table.alive[i]]
        stats = settled_stats([actors[i] for i in alive], alive, settle_s)
    finally:
        stop(actors, groups)
    return validate(Run(record.requests, record.tokens, record.events(), {"end_s": record.end_s}, record.steps())), stats


def settled_stats(actors: list, indices: list[int], wait_s: float = 20.0) -> dict[int, dict]:
    """Each worker's stats once its blocks are all free, or after `wait_s` (a real
    engine frees handed-over KV when the reader's notice comes, a step or two later,
    or when its lease runs out, 10 s, should the notice not come)."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = dict(zip(indices, ray.get([actor.stats.remote() for actor in actors])))
        if all(s["free_blocks"] == s["total_blocks"] for s in stats.values()) or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def assert_complete(run: Run) -> None:
    requests = run.requests
    assert (requests["status"] == "finished").all(), requests["status"].value_counts()
    assert (requests["output_tokens"] == requests["planned_output_tokens"]).all()


def test_live_run_agrees_with_the_simulator(local_ray):
    # a modelled hand-off above the emulator's own Ray-call floor (10-25 ms on 2 cores), which the
    # live pull then waits out; and the overheads `pdlab calibrate` fits to the live run (issue 16):
    # its dispatches' (the driver's call reaching the worker, 2-8 ms here) and its hand-offs' seconds
    # beyond the model. TTFT agrees to 0-3% mostly, but a busy 2-core machine makes the live one run
    # up to 7% long (its steps start late), hence 10% there. Classic goodput is knife-edge here (issue
    # 16): a request whose first gap after its hand-off straddles the 100 ms TBT takes 1.7% of it
    # with it; 0-8% off measured, hence 15%. TTFT p90, not p99: of 60 requests p99 is the slowest
    # one or two, and one driver hiccup in a loaded full suite put it 28% off
    cfg = config(requests=60, rate=6.0, speedup=1.0, migration={"stage_overhead_s": 0.025},
                 workload={"requests": 60, "arrival": {"process": "poisson", "rate": 6.0},
                           "lengths": {"dist": "dataset", "name": "sharegpt", "max_prompt": 2048, "max_output": 300}})
    live = run_config(cfg)
    assert_complete(live)
    sent = dispatch_extra_s(live)
    assert sent is not None and len(sent) >= 10 and 0 < np.median(sent) < 0.05, sent
    overheads = noise_as_mapping(StepNoise(handoff=fit_seconds(handoff_extra_s(live)), dispatch=fit_seconds(sent)))
    assert set(overheads) == {"handoff", "dispatch"}, overheads
    data = cfg.model_dump()
    simulated = run_config(ExperimentConfig.model_validate(
        {**data, "runtime": "sim", "cluster": {**data["cluster"], "noise": overheads}}))
    slo = SLO(**cfg.slo)
    (_, a), (_, b) = score(live, slo), score(simulated, slo)
    pairs = {"ttft p50": (a["ttft_s"]["p50"], b["ttft_s"]["p50"]), "ttft p90": (a["ttft_s"]["p90"], b["ttft_s"]["p90"]),
             "tbt p99": (a["tbt_s"]["p99"], b["tbt_s"]["p99"]), "smooth": (a["smooth_goodput"], b["smooth_goodput"]),
             "classic": (a["schemes"]["ttft_tbt"]["token_goodput"], b["schemes"]["ttft_tbt"]["token_goodput"])}
    off = {name: abs(x / y - 1) for name, (x, y) in pairs.items()}
    shown = "; ".join(f"{name} {value:.1%} ({pairs[name][0]:.4g} live, {pairs[name][1]:.4g} simulated)"
                      for name, value in off.items())
    limits = {name: 0.10 if name.startswith("ttft") else 0.15 if name == "classic" else 0.05 for name in off}
    assert all(off[name] <= limits[name] for name in off), shown


def test_a_killed_worker_loses_no_request(local_ray):
    run, stats = run_live(config(requests=30, rate=8.0, decode=2), kill=(1.5, 2))
    assert_complete(run)
    events = run.events
    fault = events[(events["kind"] == "fault") & (events["request_id"] == -1)]
    assert list(fault["instance"]) == [2] and "worker died" in fault["detail"].iloc[0]
    requeued = events[(events["kind"] == "fault") & (events["request_id"] >= 0)]
    assert len(requeued) >= 1 and requeued["detail"].str.startswith("requeued").all()
    later = events[events["time_s"] > fault["time_s"].iloc[0]]
    assert not ((later["kind"] == "dispatch") & (later["instance"] == 2)).any()
    assert all(s["free_blocks"] == s["total_blocks"] for s in stats.values())


class ScriptedMoves(Policy):
    """Prefill on the prefill instance, decode on the first decode instance, then move
    requests there once they have 10 tokens: live, by recompute, preempted and resumed."""
    name = "test-scripted-moves"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.plan = ["live", "recompute", "preempt-recompute", "preempt-swap", "live", "live"]

    def decide(self, snapshot):
        prefill, decode = snapshot.instances.serving(PREFILL)[0], snapshot.instances.serving(DECODE)
        actions = [Dispatch(r.id, prefill) for r in snapshot.to_dispatch]
        actions += [Handoff(r.id, decode[0]) for r in snapshot.to_hand_off]
        actions += [Resume(r.id, decode[0] if r.instance == decode[0] else decode[1]) for r in snapshot.preempted]
        for view in snapshot.running.get(decode[0], ()):
            if self.plan and view.generated >= 10 and view.max_output_tokens - view.generated > 30:
                move = self.plan.pop(0)
                if move.startswith("preempt"):
                    actions.append(Preempt(view.id, move.removeprefix("preempt-")))
                else:
                    actions.append(Migrate(view.id, decode[1], move))
        return actions


@pytest.mark.parametrize("transport", ["object_store", "shm", "gloo"])
def test_router_moves_complete_and_free_every_block(local_ray, transport):
    cfg = config(requests=16, rate=4.0, decode=2, router={"tick_s": 0.1},
                 ray={"speedup": 2.0, "worker_cpus": 0.1, "transport": transport},
                 workload={"requests": 16, "arrival": {"process": "poisson", "rate": 4.0},
                           "lengths": {"dist": "uniform", "prompt": [100, 600], "output": [60, 150]}})
    run, stats = run_live(cfg, ScriptedMoves())
    assert_complete(run)
    kinds = run.events["kind"].value_counts()
    assert kinds.get("migrate_end", 0) == 4 and kinds.get("migrate_abort", 0) == 0
    assert kinds.get("preempt", 0) == 2 and kinds.get("resume", 0) == 2
    assert kinds.get("migrate_stage", 0) >= 4
    for request_id, times in run.tokens.groupby("request_id")["time_s"]:
        assert times.is_monotonic_increasing, request_id
    assert all(s["free_blocks"] == s["total_blocks"] and s["running"] == 0 for s in stats.values()), stats


class OneSlowMigration(Policy):
    """Two colocated instances: everything on instance 0; the first request with 10
    tokens migrates live to instance 1, where `then` may kill the worker."""
    name = "test-one-slow-migration"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, then=None) -> None:
        super().__init__(seed)
        self.then, self.moved = then, None

    def decide(self, snapshot):
        actions = [Dispatch(r.id, 0) for r in snapshot.to_dispatch] + [Handoff(r.id, 0) for r in snapshot.to_hand_off]
        for view in snapshot.running.get(0, ()):
            if self.moved is None and view.generated >= 10 and view.max_output_tokens - view.generated > 40:
                self.moved = view.id
                actions.append(Migrate(view.id, 1, "live"))
                if self.then:
                    threading.Timer(0.3, self.then).start()
        return actions


@pytest.mark.parametrize("fault", ["timeout", "target_dead"])
def test_a_migration_that_cannot_complete_is_aborted_and_the_request_carries_on(local_ray, fault):
    cfg = config(requests=6, rate=4.0, router={"tick_s": 0.1}, migration={"stage_overhead_s": 4.0},
                 cluster={"instances": [{"role": "colocated", "count": 2}], "kv_blocks": 4000},
                 workload={"requests": 6, "arrival": {"process": "poisson", "rate": 4.0},
                           "lengths": {"dist": "uniform", "prompt": [100, 300], "output": [80, 100]}})
    plan = build_setup(cfg, generate(cfg.workload, cfg.seed))
    actors, groups = start_workers(plan.instances, [0, 0], WorkerOptions(2.0, worker_cpus=0.1))
    plan.policy = OneSlowMigration(then=(lambda: ray.kill(actors[1])) if fault == "target_dead" else None)
    try:
        record = LiveRuntime(plan, actors, LiveOptions(2.0, transfer_timeout_s=1.0)).run()
        stats = ray.get(actors[0].stats.remote())
        if fault == "timeout":
            assert ray.get(actors[1].stats.remote())["free_blocks"] == stats["total_blocks"]
    finally:
        stop(actors, groups)
    run = validate(Run(record.requests, record.tokens, record.events(), {"end_s": record.end_s}))
    assert_complete(run)
    events = run.events
    moved = plan.policy.moved
    aborts = events[events["kind"] == "migrate_abort"]
    assert list(aborts["request_id"]) == [moved] and list(aborts["detail"]) == [fault]
    assert not (events["kind"] == "migrate_end").any()
    after = events[(events["request_id"] == moved) & (events["kind"] == "finish")]
    assert list(after["instance"]) == [0]
    assert stats["free_blocks"] == stats["total_blocks"]


def test_worker_engines_run_at_niceness_0(local_ray, caplog):
    # Ray starts workers at niceness 15: steps started late on a busy node (TBT p99 off by half)
    plan = build_setup(config(), generate(config().workload, 1))
    workers, _ = live_options(config())
    actors, groups = start_workers(plan.instances, [0] * len(plan.instances), workers)
    try:
        assert ray.get([actor.niceness.remote() for actor in actors]) == [0, 0]
    finally:
        stop(actors, groups)
    _warn_if_niced([0, 15])
    assert "RAY_worker_niceness=0" in caplog.text
