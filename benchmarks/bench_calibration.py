"""Benchmark: does the calibrated simulator predict a live cluster of real engines?
A small cluster (1 prefill + 1 decode worker, or one colocated worker) of vLLM's CPU
build (or the hf engine) serves a workload live on a local Ray; the simulator runs the
same config with the perf model `pdlab calibrate --engine` fitted; TTFT and TPOT,
side by side, with the relative error (target: within 15%).

    .venv/bin/pdlab model make models/tiny-llama
    .venv/bin/pdlab calibrate --engine vllm --model-path models/tiny-llama --out configs/perf/vllm-cpu-tiny-llama.yaml
    .venv/bin/python benchmarks/bench_calibration.py [--engine vllm] [--requests 40] [--rate 1] [--layout disagg|colocated]
"""
from __future__ import annotations

import argparse
import time

from experiments.config import ExperimentConfig
from experiments.metrics import score
from experiments.runner import run_config
from router.slo import SLO


def config(engine: str, model_path: str, perf: str, requests: int, rate: float, layout: str) -> ExperimentConfig:
    instances = [{"role": "colocated"}] if layout == "colocated" else [{"role": "prefill"}, {"role": "decode"}]
    return ExperimentConfig.model_validate({
        "name": "calibration", "seed": 0, "runtime": "ray",
        "cluster": {"model": "tiny-llama", "hardware": "CPU", "perf": perf, "kv_blocks": 160,
                    "scheduler": {"block_size": 32, "max_num_seqs": 64, "max_num_batched_tokens": 4096},
                    "instances": instances},
        "router": {"policy": "round_robin"},
        "ray": {"engine": engine, "model_path": model_path, "start_timeout_s": 180},
        "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": rate},
                     "lengths": {"dist": "dataset", "name": "sharegpt", "max_prompt": 1024, "max_output": 256}},
        "slo": {"ttft": 0.25, "tbt": 0.03, "tpot": 0.03, "v": 0.02, "l": 0.25, "alpha": 5}})


def figures(summary: dict) -> dict[str, float]:
    return {"TTFT p50 (ms)": summary["ttft_s"]["p50"] * 1e3, "TTFT p90 (ms)": summary["ttft_s"]["p90"] * 1e3,
            "TPOT p50 (ms)": summary["tpot_s"]["p50"] * 1e3, "TPOT p90 (ms)": summary["tpot_s"]["p90"] * 1e3,
            "TBT p50 (ms)": summary["tbt_s"]["p50"] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--model-path", default="models/tiny-llama")
    parser.add_argument("--perf", default="configs/perf/vllm-cpu-tiny-llama.yaml")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--layout", choices=["disagg", "colocated"], default="disagg",
                        help="1 prefill + 1 decode worker (default), or one colocated worker")
    args = parser.parse_args()
    live_config = config(args.engine, args.model_path, args.perf, args.requests, args.rate, args.layout)
    slo = SLO(**live_config.slo)
    started = time.perf_counter()
    live = run_config(live_config)
    wall = time.perf_counter() - started
    simulated = run_config(live_config.model_copy(update={"runtime": "sim"}))
    a, b = figures(score(live, slo)[1]), figures(score(simulated, slo)[1])
    print(f"{'1P+1D' if args.layout == 'disagg' else '1 colocated'} {args.engine} tiny-llama on CPU, {args.requests} ShareGPT-shaped requests at {args.rate:g}/s, "
          f"perf {args.perf}; live run {wall:.1f} s wall")
    print(f"{'metric':16s} {'live':>10s} {'simulated':>10s} {'error':>8s}")
    worst = 0.0
    for name in a:
        error = (b[name] - a[name]) / a[name]
        worst = max(worst, abs(error))
        print(f"{name:16s} {a[name]:10.2f} {b[name]:10.2f} {error:+8.1%}")
    print(f"largest error {worst:.1%} (target <= 15%): {'met' if worst <= 0.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
