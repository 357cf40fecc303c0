"""The simulator's behaviour: prefill stalls, chunked prefill, overload, KV memory,
final states and determinism, on small configs."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import write_run
from experiments.runs.runner import build_setup, simulate
from experiments.scoring.metrics import score
from experiments.workloads.workload import generate


def config(**sections) -> ExperimentConfig:
    base = {
        "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB", "instances": [{"role": "colocated"}]},
        "workload": {"requests": 300, "arrival": {"process": "poisson", "rate": 2.0},
                     "lengths": {"dist": "dataset", "name": "sharegpt", "max_total": 4096}},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentConfig.model_validate(base)


def chunked(on: bool, rate: float = 2.0) -> ExperimentConfig:
    return config(cluster={"model": "Llama-3.1-8B", "hardware": "A100-80GB", "instances": [{"role": "colocated"}],
                           "scheduler": {"chunked_prefill": on, "max_num_batched_tokens": 512 if on else 8192}},
                  workload={"requests": 300, "arrival": {"process": "poisson", "rate": rate},
                            "lengths": {"dist": "fixed", "prompt": 1600, "output": 200}})


def test_decode_stalls_while_a_prefill_runs_under_prefill_first():
    cfg = config(workload={"requests": 2, "arrival": {"process": "constant", "rate": 1.0},
                           "lengths": {"dist": "fixed", "prompt": 4000, "output": 200}})
    run = simulate(cfg)
    tokens = run.tokens[run.tokens["request_id"] == 0]["time_s"].to_numpy()
    gaps = np.diff(tokens)
    plan = build_setup(cfg, generate(cfg.workload, 0))
    prefill = plan.instances[0].perf.prefill_time(4000, 4000 ** 2)
    second_arrival = run.requests["arrival_s"].iloc[1]
    stalled = gaps.argmax()
    assert tokens[stalled] <= second_arrival + 0.1 and gaps.max() >= prefill
    assert np.median(gaps) < prefill / 5


def test_chunked_prefill_lowers_tail_tbt_at_the_same_load():
    plain, split = (score(simulate(chunked(on)))[1] for on in (False, True))
    assert split["tbt_s"]["p99"] < 0.7 * plain["tbt_s"]["p99"]
    assert split["throughput_tokens_per_s"] == pytest.approx(plain["throughput_tokens_per_s"], rel=0.1)


def test_past_capacity_ttft_grows_without_bound_while_throughput_flattens():
    results = {}
    for rate, requests in ((40.0, 400), (40.0, 1600), (80.0, 1600)):
        cfg = config(workload={"requests": requests, "arrival": {"process": "poisson", "rate": rate},
                               "lengths": {"dist": "fixed", "prompt": 1024, "output": 128}})
        results[(rate, requests)] = score(simulate(cfg))[1]
    assert results[(40.0, 1600)]["ttft_s"]["p50"] > 2 * results[(40.0, 400)]["ttft_s"]["p50"]
    assert results[(80.0, 1600)]["throughput_tokens_per_s"] == pytest.approx(
        results[(40.0, 1600)]["throughput_tokens_per_s"], rel=0.1)


class CheckedSimulator(Simulator):
    """Checks every instance's KV accounting after every event."""

    def _wake(self, index, version):
        super()._wake(index, version)
        for instance in self.instances:
            horizon = instance.step + (instance.segment.steps if instance.segment else 0)
            held = sum(instance.batch.blocks_of(r, horizon) if r.state == "decoding" else r.blocks
                       for r in self.requests.values()
                       if r.instance == instance.id
                       and r.state in ("prefilling", "decoding", "handoff", "transfer", "migrating"))
            control = self.control
            reserved = sum(t.blocks for t in control.transfers.values() if t.target == instance.id)
            reserved += sum(m.reserved_blocks for m in control.moves.live.values() if m.target == instance.id)
            held += sum(r.blocks for _, r in instance.host.returning)
            leaving = instance.host.leaving_blocks
            assert 0 <= instance.blocks.free <= instance.blocks.total
            assert instance.blocks.free + leaving + held + reserved == instance.blocks.total
            for request in instance.running.values():
                in_use = request.context + instance.step - request.join_step
                assert in_use <= instance.batch.blocks_of(request, instance.step) * instance.config.block_size


@pytest.mark.parametrize("mode", ["recompute", "swap"])
@pytest.mark.parametrize("roles", [["colocated"], ["prefill", "decode"]])
def test_kv_memory_never_exceeds_capacity_and_every_request_ends(mode, roles):
    cfg = config(cluster={"model": "Llama-3.1-8B", "hardware": "A100-80GB", "kv_blocks": 400,
                          "instances": [{"role": r} for r in roles], "scheduler": {"preemption": mode}},
                 workload={"requests": 150, "arrival": {"process": "poisson", "rate": 6.0},
                           "lengths": {"dist": "uniform", "prompt": [200, 1500], "output": [50, 600]}})
    workload = generate(cfg.workload, 0)
    simulator = CheckedSimulator(build_setup(cfg, workload))
    record = simulator.run()
    assert "preempt" in record.kinds()
    assert (record.requests["status"] == "finished").all()
    planned = workload.set_index("request_id")["output_tokens"]
    delivered = record.requests.set_index("request_id")["output_tokens"]
    assert (delivered == planned.loc[delivered.index]).all()


def test_disaggregated_requests_are_prefilled_then_handed_off():
    cfg = config(cluster={"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                          "instances": [{"role": "prefill"}, {"role": "decode", "count": 2}]})
    run = simulate(cfg)
    events = run.events
    per_kind = events["kind"].value_counts()
    decoding = int((generate(cfg.workload, 0)["output_tokens"] > 1).sum())
    assert per_kind["transfer_start"] == per_kind["transfer_end"] == decoding
    assert set(events.loc[events["kind"] == "transfer_end", "peer"]) == {1, 2}
    assert set(events.loc[events["kind"] == "prefill_end", "instance"]) == {0}
    table, summary = score(run)
    assert summary["tbt_s"]["p99"] < 0.05


@pytest.mark.parametrize("policy", ["least_loaded", "classic_goodput", "smooth_goodput"])
def test_a_prefill_under_way_counts_as_work_ahead(policy):
    cfg = config(cluster={"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                          "instances": [{"role": "prefill", "count": 2}, {"role": "decode"}]},
                 router={"policy": policy},
                 workload={"requests": 2, "arrival": {"process": "constant", "rate": 50.0},
                           "lengths": {"dist": "fixed", "prompt": 3000, "output": 4}})
    events = simulate(cfg).events
    dispatched = events[events["kind"] == "dispatch"].set_index("request_id")["instance"]
    prefilled = events[events["kind"] == "prefill_end"].set_index("request_id")["time_s"]
    assert prefilled[0] > 0.02
    assert dispatched[0] != dispatched[1]


def test_same_config_and_seed_give_byte_identical_tables(tmp_path):
    cfg = config(cluster={"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                          "instances": [{"role": "prefill"}, {"role": "decode"}]})
    first, second = write_run(simulate(cfg), tmp_path / "a"), write_run(simulate(cfg), tmp_path / "b")
    for table in ("requests", "tokens", "events"):
        assert (first / f"{table}.parquet").read_bytes() == (second / f"{table}.parquet").read_bytes()
    other = simulate(config(seed=1))
    assert not other.tokens["time_s"].equals(simulate(cfg).tokens["time_s"])
