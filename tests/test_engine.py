"""The engine port's model backend, stepped one iteration at a time, schedules exactly
as the discrete-event simulator does."""
from __future__ import annotations

import pytest

from cluster.core.request import Request
from cluster.engines.model import ModelEngine
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, simulate
from experiments.workloads.workload import generate


def drive(engine: ModelEngine, requests: list[Request]) -> dict[int, list[float]]:
    """Run the engine in virtual time: arrivals join at the next step boundary."""
    pending = sorted(requests, key=lambda r: r.arrival)
    times: dict[int, list[float]] = {r.id: [] for r in requests}
    now = 0.0
    while pending or engine.stats()["queued"] or engine.stats()["running"] or engine.instance.prefilling:
        while pending and pending[0].arrival <= now:
            engine.add(pending.pop(0))
        end = engine.begin(now)
        if end is None:
            now = pending[0].arrival
            continue
        result = engine.finish()
        for request in result.tokens:
            times[request].append(result.end_s)
        now = end
    return times


@pytest.mark.parametrize("chunked", [False, True])
def test_stepping_the_model_engine_matches_the_simulator(chunked):
    config = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "colocated"}], "kv_blocks": 800,
                    "scheduler": {"chunked_prefill": chunked, "max_num_batched_tokens": 512 if chunked else 8192}},
        "workload": {"requests": 40, "arrival": {"process": "poisson", "rate": 4.0},
                     "lengths": {"dist": "uniform", "prompt": [50, 1200], "output": [5, 300]}}})
    workload = generate(config.workload, 0)
    plan = build_setup(config, workload)
    engine = ModelEngine(plan.instances[0])
    stepped = drive(engine, [Request(r.id, r.tenant, r.arrival, r.prompt, r.max_tokens) for r in plan.requests])
    run = simulate(config)
    for request_id, group in run.tokens.groupby("request_id"):
        assert stepped[request_id] == pytest.approx(list(group["time_s"]), abs=1e-9), request_id
    assert sum(len(t) for t in stepped.values()) == len(run.tokens)


def test_aborting_a_request_swapped_out_by_the_router_frees_its_blocks_once():
    from cluster.core.scheduling import InstanceSpec, SchedulerConfig
    from cluster.hardware.perfmodel import IterationModel
    from router.snapshot import COLOCATED

    flat = IterationModel(prefill=(0.01, 0.0, 0.0), decode=(0.01, 0.0, 0.0))
    engine = ModelEngine(InstanceSpec(0, COLOCATED, flat, SchedulerConfig(), 100, 1.0, 1e9))
    engine.add(Request(0, "default", 0.0, 100, 50))
    now = 0.0
    for _ in range(5):
        now = engine.begin(now)
        engine.finish()
    assert engine.preempt(0, "swap", now) is not None
    engine.abort(0)
    assert engine.stats()["free_blocks"] == 100


def test_a_parked_request_holds_its_kv_bytes_in_host_memory_until_it_resumes():
    from cluster.core.scheduling import InstanceSpec, SchedulerConfig
    from cluster.hardware.perfmodel import IterationModel
    from router.snapshot import COLOCATED

    flat = IterationModel(prefill=(0.01, 0.0, 0.0), decode=(0.01, 0.0, 0.0))
    engine = ModelEngine(InstanceSpec(0, COLOCATED, flat, SchedulerConfig(), 100, 4.0, 1e9, host_blocks=50))
    engine.add(Request(0, "default", 0.0, 100, 50))
    now = 0.0
    for _ in range(5):
        now = engine.begin(now)
        engine.finish()
    context = engine.context_of(0)
    assert engine.preempt(0, "swap", now) > 0
    tokens, data = engine.host[0]
    assert tokens == context and len(data) == 4 * context
    assert engine.stats()["host_free_blocks"] == 50 - 7
    assert engine.resume(0) and not engine.host
    while (end := engine.begin(now)) is not None:
        now = end
        engine.finish()
    assert engine.stats()["free_blocks"] == 100 and engine.stats()["host_free_blocks"] == 50
