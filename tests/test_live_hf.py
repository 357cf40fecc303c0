"""Real models behind the live runtime: `hf` workers on a local Ray serve a
disaggregated run in which every request is handed off P->D through a real
transport, and the router migrates (live, by recompute), preempts (recompute, swap)
and resumes requests; every request's token ids equal transformers' greedy output
for its prompt, and every worker ends with all its blocks free."""
from __future__ import annotations

import pytest
from test_live import ScriptedMoves, assert_complete, run_live

from experiments.config.experiment import ExperimentConfig


def hf_config(model_path: str, transport: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "runtime": "ray", "seed": 3,
        "cluster": {"model": "tiny-llama", "kv_blocks": 256, "scheduler": {"block_size": 16},
                    "instances": [{"role": "prefill"}, {"role": "decode", "count": 2}]},
        "router": {"tick_s": 0.03},
        "ray": {"engine": "hf", "model_path": model_path, "worker_cpus": 0.1, "transport": transport},
        "workload": {"requests": 10, "arrival": {"process": "poisson", "rate": 10.0},
                     "lengths": {"dist": "uniform", "prompt": [5, 150], "output": [80, 160]}}})


@pytest.mark.parametrize("transport", ["object_store", "gloo"])
def test_hf_workers_hand_off_migrate_and_preempt_without_changing_a_token(local_ray, tiny_model, greedy, transport):
    cfg = hf_config(tiny_model, transport)
    run, stats = run_live(cfg, ScriptedMoves())
    assert_complete(run)
    kinds = run.events["kind"].value_counts()
    assert kinds.get("transfer_end", 0) == 10
    assert kinds.get("migrate_end", 0) == 4 and kinds.get("migrate_abort", 0) == 0
    assert kinds.get("preempt", 0) == 2 and kinds.get("resume", 0) == 2
    for request in run.requests.itertuples():
        got = run.tokens.loc[run.tokens["request_id"] == request.request_id, "token_id"].tolist()
        assert got == greedy(request.request_id, request.prompt_tokens, request.output_tokens, cfg.seed), \
            request.request_id
    assert all(s["free_blocks"] == s["pool_free_blocks"] == s["total_blocks"] and s["running"] == 0
               for s in stats.values()), stats
