"""Every experiment config shipped in configs/ validates and simulates (shortened)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.config.experiment import load_variants
from experiments.runs.runner import simulate

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_simulates(path):
    for variant, config in load_variants(path).items():
        if config.workload.requests:
            config = config.model_copy(update={"workload": config.workload.model_copy(update={"requests": 40})})
        run = simulate(config)
        assert len(run.requests) > 0 and set(run.requests["status"]) <= {"finished", "unfinished", "rejected"}


GPU = sorted((Path(__file__).resolve().parents[1] / "configs" / "gpu").glob("*.yaml"))


@pytest.mark.parametrize("path", GPU, ids=lambda p: p.name)
def test_gpu_configs_validate_and_their_instances_fit(path, tiny_model):
    from experiments.runs.runner import build_setup
    from experiments.workloads.workload import generate

    configs = load_variants(path, [f"ray.model_path={tiny_model}", "workload.requests=10"])
    assert {c.router.policy for c in configs.values()} == {"classic_goodput", "smooth_goodput"}
    for config in configs.values():
        assert config.ray.engine == "vllm" and config.ray.worker_gpus == 1
        plan = build_setup(config, generate(config.workload, config.seed))
        assert len(plan.instances) == 4 and all(i.total_blocks > 1000 for i in plan.instances)


def test_the_cpu_vllm_config_validates_and_simulates_with_its_calibrated_fit(tiny_model):
    path = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "vllm-tiny.yaml"
    configs = load_variants(path, [f"ray.model_path={tiny_model}", "workload.requests=20", "runtime=sim"])
    assert {c.router.policy for c in configs.values()} == {"classic_goodput", "smooth_goodput"}
    run = simulate(configs["classic"])
    assert (run.requests["status"] == "finished").all()
