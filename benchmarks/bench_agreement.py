"""Benchmark: the simulator and the live Ray runtime (emulated workers) on the same
config agree: TTFT p50/p99, TBT p99, smooth and classic goodput, side by side, with
the live/simulated ratio (target: within 5%).

    .venv/bin/python benchmarks/bench_agreement.py [--requests 400] [--rate 8] [--policy round_robin]
"""
from __future__ import annotations

import argparse
import time

from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import run_config
from experiments.scoring.metrics import score
from router.slo import SLO


def config(requests: int, rate: float, policy: str, speedup: float) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "name": "agreement", "seed": 0, "runtime": "ray",
        "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                    "instances": [{"role": "prefill", "count": 2}, {"role": "decode", "count": 2}]},
        "router": {"policy": policy},
        "ray": {"speedup": speedup},
        "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": rate},
                     "lengths": {"dist": "dataset", "name": "sharegpt", "max_prompt": 4096, "max_output": 1024}},
        "slo": {"ttft": 1.0, "tbt": 0.1, "v": 0.1, "l": 1.0, "alpha": 5}})


def figures(summary: dict) -> dict[str, float]:
    return {"TTFT p50 (s)": summary["ttft_s"]["p50"], "TTFT p99 (s)": summary["ttft_s"]["p99"],
            "TBT p99 (s)": summary["tbt_s"]["p99"], "smooth goodput (/s)": summary["smooth_goodput"],
            "classic goodput (tok/s)": summary["schemes"]["ttft_tbt"]["token_goodput"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--policy", default="round_robin")
    parser.add_argument("--speedup", type=float, default=1.0)
    args = parser.parse_args()
    live_config = config(args.requests, args.rate, args.policy, args.speedup)
    slo = SLO(**live_config.slo)
    started = time.perf_counter()
    live = run_config(live_config)
    wall = time.perf_counter() - started
    simulated = run_config(live_config.model_copy(update={"runtime": "sim"}))
    a, b = figures(score(live, slo)[1]), figures(score(simulated, slo)[1])
    print(f"2P+2D emulated A100 Llama-3.1-8B, {args.requests} ShareGPT requests at {args.rate:g}/s, "
          f"{args.policy}, speedup {args.speedup:g}; live run {wall:.1f} s wall, "
          f"report lag p50 {live.meta['report_lag_s']['p50'] * 1e3:.2f} ms p99 {live.meta['report_lag_s']['p99'] * 1e3:.2f} ms")
    print(f"{'metric':26s} {'live':>12s} {'simulated':>12s} {'live/sim':>9s}")
    worst = 0.0
    for name in a:
        ratio = a[name] / b[name]
        worst = max(worst, abs(ratio - 1))
        print(f"{name:26s} {a[name]:12.4f} {b[name]:12.4f} {ratio:9.3f}")
    print(f"largest difference {worst:.1%} (target <= 5%): {'met' if worst <= 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
