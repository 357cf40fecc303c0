"""The steady-state ceiling: what a saturated simulation sustains, and how a capacity
search reports against it."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.hardware.yamlfile import validate
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, simulate
from experiments.sweeps.ceiling import ceiling, instance_ceiling
from experiments.workloads.workload import generate
from router.snapshot import COLOCATED

CONFIG = {
    "name": "tiny-ceiling", "seed": 0,
    "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB", "kv_blocks": 1_500,
                "instances": [{"role": "prefill"}, {"role": "decode"}]},
    "router": {"policy": "least_loaded"},
    "workload": {"requests": 1_200, "arrival": {"process": "poisson", "rate": 4.0},
                 "lengths": {"dist": "uniform", "prompt": [64, 512], "output": [64, 512]}},
    "slo": {"ttft": 1.0, "tbt": 0.1, "v": 0.1, "l": 1.0, "alpha": 5},
}


def config(**workload) -> ExperimentConfig:
    return validate({**CONFIG, "workload": {**CONFIG["workload"], **workload}}, ExperimentConfig, "test")


def test_decode_kv_binds_a_small_cache_and_a_saturated_run_produces_about_the_ceiling():
    limit = ceiling(config())
    assert limit.binds == "decode KV" and limit.decode_rate < limit.prefill_rate
    run = simulate(config(arrival={"process": "poisson", "rate": 3 * limit.rate}))
    arrivals = run.requests["arrival_s"].to_numpy()
    times = run.tokens["time_s"].to_numpy()
    start, end = np.quantile(arrivals, 0.25), arrivals.max()
    produced = ((times >= start) & (times < end)).sum() / (end - start)
    out = run.requests["output_tokens"].mean()
    assert produced / out == pytest.approx(limit.rate, rel=0.15)


def test_more_kv_raises_the_decode_ceiling_and_a_colocated_instance_shares_its_time():
    small, large = ceiling(config()), ceiling(validate({**CONFIG, "cluster": {**CONFIG["cluster"], "kv_blocks": 6_000}},
                                                       ExperimentConfig, "test"))
    assert large.decode_rate > small.decode_rate and large.prefill_rate == pytest.approx(small.prefill_rate)
    workload = generate(config().workload, 0)
    specs = build_setup(config(), workload).instances
    alone = instance_ceiling(specs, workload)
    shared = instance_ceiling([type(specs[1])(**{**vars(specs[1]), "role": COLOCATED})], workload)
    expected = 1 / (1 / alone.prefill_rate + 1 / alone.decode_rate)
    assert shared.rate == pytest.approx(expected) and shared.rate < min(alone.prefill_rate, alone.decode_rate)
