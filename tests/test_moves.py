"""Router-driven moves in the simulator: live and recompute migration, preemption and
resume, with their abort paths; KV accounting holds and no request is lost."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup
from experiments.workloads.workload import generate
from router.actions import Dispatch, Handoff, Migrate, Preempt, Resume
from router.policy import Policy
from tests.test_simulator import CheckedSimulator


class MigrateOnce(Policy):
    """Prefill on 0, decode on 1; at the first tick with decoding requests, move them all to 2."""
    name = "test_migrate_once"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, mode: str = "live") -> None:
        super().__init__(seed)
        self.mode, self.moved = mode, set()

    def decide(self, snapshot):
        actions = [Dispatch(r.id, 0) for r in snapshot.to_dispatch]
        actions += [Handoff(r.id, 1) for r in snapshot.to_hand_off]
        if snapshot.event == "tick":
            for r in snapshot.running.get(1, ()):
                if r.id not in self.moved:
                    self.moved.add(r.id)
                    actions.append(Migrate(r.id, 2, self.mode))
        return actions


class PreemptAndResume(Policy):
    """Colocated instances; every tick preempt one running request and resume the
    preempted ones on the next instance (recompute) or where they were (swap)."""
    name = "test_preempt_resume"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, mode: str = "recompute") -> None:
        super().__init__(seed)
        self.mode, self.home = mode, {}

    def decide(self, snapshot):
        actions = [Dispatch(r.id, r.id % 2) for r in snapshot.to_dispatch]
        for r in snapshot.preempted:
            target = self.home[r.id] if self.mode == "swap" else 1 - self.home[r.id]
            actions.append(Resume(r.id, target))
        if snapshot.event == "tick" and snapshot.running:
            victim = next(iter(snapshot.running.values()))[0]
            self.home[victim.id] = victim.instance
            actions.append(Preempt(victim.id, self.mode))
        return actions


def run(policy: str, roles: list[str], mode: str, requests: int = 40):
    config = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": r} for r in roles], "kv_blocks": 2000},
        "router": {"policy": policy, "params": {"mode": mode}, "tick_s": 0.5},
        "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": 4.0},
                     "lengths": {"dist": "uniform", "prompt": [100, 1500], "output": [100, 400]}}})
    workload = generate(config.workload, 0)
    simulator = CheckedSimulator(build_setup(config, workload))
    record = simulator.run()
    events = record.events()
    assert (record.requests["status"] == "finished").all()
    planned = workload.set_index("request_id")["output_tokens"]
    assert (record.requests.set_index("request_id")["output_tokens"] == planned).all()
    tokens = record.tokens
    assert (tokens.groupby("request_id")["time_s"].apply(lambda t: t.is_monotonic_increasing)).all()
    slo = simulator.control.views.slo
    for request in simulator.requests.values():          # SLO state fed piecemeal at every tick agrees
        simulator.fresh([request])
        times = tokens.loc[tokens["request_id"] == request.id, "time_s"].to_numpy() - request.arrival
        assert slo.n[request.slot] == len(times)
        late = max(0.0, float((times - slo.v[request.slot] * np.arange(1, len(times) + 1)).max()))
        assert slo.lateness[request.slot] == pytest.approx(late, abs=1e-9)
    return events, tokens, simulator


@pytest.mark.parametrize("mode", ["live", "recompute"])
def test_migration_moves_decoding_requests_and_loses_no_token(mode):
    events, tokens, simulator = run("test_migrate_once", ["prefill", "decode", "decode"], mode)
    started = events[events["kind"] == "migrate_start"]
    ended = events[events["kind"] == "migrate_end"]
    aborted = events[events["kind"] == "migrate_abort"]
    assert len(started) > 0 and len(started) == len(ended) + len(aborted)
    assert set(started["detail"]) == {mode}
    assert (ended["peer"] == 2).all()
    if mode == "live":
        stages = events[events["kind"] == "migrate_stage"]
        assert stages.groupby("request_id").size().max() >= 2     # copied while decoding, then the last stage
    assert not simulator.control.moves.live


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_router_preemption_and_resume(mode):
    events, tokens, simulator = run("test_preempt_resume", ["colocated", "colocated"], mode)
    preempts = events[events["kind"] == "preempt"]
    resumes = events[events["kind"] == "resume"]
    assert len(preempts) > 0 and len(resumes) == len(preempts)
    assert set(preempts["detail"]) == {mode}
    if mode == "swap":
        assert (preempts["bytes"] > 0).all()
        assert (resumes.set_index("request_id")["instance"] == preempts.set_index("request_id")["instance"]).all()
    assert not simulator.control.moves.preempted


def test_bad_moves_are_refused_with_a_clear_error():
    class Bad(Policy):
        name = "test_bad_move"

        def decide(self, snapshot):
            return [Migrate(r.id, 0) for r in snapshot.to_dispatch]

    config = ExperimentConfig.model_validate({
        "router": {"policy": "test_bad_move"},
        "workload": {"requests": 2, "arrival": {"process": "poisson", "rate": 4.0},
                     "lengths": {"dist": "fixed", "prompt": 10, "output": 5}}})
    with pytest.raises(ValueError, match="Migrate: request 0 is not decoding"):
        CheckedSimulator(build_setup(config, generate(config.workload, 0))).run()


@pytest.mark.parametrize("policy", ["least_loaded", "classic_goodput", "smooth_goodput"])
def test_every_policy_runs_a_memory_tight_cluster_to_the_end(policy):
    config = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode", "count": 2}], "kv_blocks": 600},
        "router": {"policy": policy, "tick_s": 0.5},
        "workload": {"requests": 120, "arrival": {"process": "poisson", "rate": 6.0},
                     "lengths": {"dist": "uniform", "prompt": [100, 1500], "output": [100, 600]}}})
    workload = generate(config.workload, 0)
    simulator = CheckedSimulator(build_setup(config, workload))
    record = simulator.run()
    assert set(record.requests["status"]) <= {"finished", "rejected"}
    if policy == "smooth_goodput":
        assert (record.requests["status"] == "finished").all()
