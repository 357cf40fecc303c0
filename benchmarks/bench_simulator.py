"""Benchmark: how fast the discrete-event simulator runs, against Vidur.

Each scenario runs in a fresh process pinned to one core: Azure conversation
lengths, Poisson arrivals at about 75% of capacity, Llama on A100-80GB. Timed:
generating the workload, building the setup and `Simulator(setup).run()` with the
requests table (tokens stay compact: decode-step times and per-request runs).
Writing the run folder as `pdlab run` does (validated, Parquet, the tokens table
in chunks of whole requests) is timed on its own, "write s".
Prints simulated requests, iterations and tokens per wall second, peak memory,
and the ratio to Vidur's best figures. Targets (issue): at least 10,000 requests
and 75,000 iterations per wall second on one instance, and 1,000,000 requests
in under 4 GiB. All scenarios take about 3.5 minutes.

    .venv/bin/python benchmarks/bench_simulator.py [--scenarios one pd ...] [--rate R] [--no-validate]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

VIDUR_REQUESTS_S, VIDUR_ITERATIONS_S = 1_030, 10_400
TARGET_REQUESTS_S, TARGET_ITERATIONS_S, TARGET_GIB = 10_000, 75_000, 4.0
COLOCATED = [{"role": "colocated"}]
DISAGG = [{"role": "prefill", "count": 4}, {"role": "decode", "count": 4}]


@dataclass
class Scenario:
    title: str
    requests: int
    rate: float
    instances: list[dict] = field(default_factory=lambda: COLOCATED)
    model: str = "Llama-3.1-8B"
    max_total: int | None = None
    validate: bool = True
    base: str | None = None
    """A paper config the scenario runs (its cluster and workload), routed by `policy`."""
    policy: str = "round_robin"


SCENARIOS = {
    "one": Scenario("1 colocated, Llama-3.1-8B", 10_000, 9.0),
    "one-llama2": Scenario("1 colocated, Llama-2-7B", 10_000, 3.7, model="Llama-2-7B", max_total=4096),
    "pd": Scenario("4P+4D, Llama-3.1-8B", 100_000, 36.0, DISAGG),
    "pd-1m": Scenario("4P+4D, Llama-3.1-8B", 1_000_000, 36.0, DISAGG),
    **{f"{short}-{paper}": Scenario(f"{paper} paper, {policy}", 1_500, rate, base=f"configs/paper/disagg-{paper}.yaml",
                                    policy=policy, validate=False)
       for short, policy in (("ll", "least_loaded"), ("cg", "classic_goodput"), ("sg", "smooth_goodput"))
       for paper, rate in (("llama8b", 7.0), ("qwen14b", 2.5))},
}
ROUTED = [name for name, scenario in SCENARIOS.items() if scenario.base]
ROUTER_TICK_S = 0.25


def config(scenario: Scenario):
    from experiments.config.experiment import ExperimentConfig, load_config

    if scenario.base:
        return load_config(Path(__file__).resolve().parents[1] / scenario.base,
                           [f"router.policy={scenario.policy}", f"router.tick_s={ROUTER_TICK_S}",
                            f"workload.requests={scenario.requests}", f"workload.arrival.rate={scenario.rate}"])

    lengths = {"dist": "dataset", "name": "azure_conv"}
    if scenario.max_total:
        lengths["max_total"] = scenario.max_total
    return ExperimentConfig.model_validate({
        "name": "bench-simulator", "seed": 0,
        "cluster": {"model": scenario.model, "hardware": "A100-80GB", "instances": scenario.instances},
        "workload": {"requests": scenario.requests, "arrival": {"process": "poisson", "rate": scenario.rate},
                     "lengths": lengths},
    })


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(scenario: Scenario, check: bool) -> dict:
    import tempfile

    from cluster.sim.simulator import Simulator
    from experiments.runs.runformat import Run, write_run_chunked
    from experiments.runs.runner import STREAM_TOKENS, build_setup
    from experiments.workloads.workload import generate

    cfg = config(scenario)
    start = time.perf_counter()
    workload = generate(cfg.workload, cfg.seed)
    simulator = Simulator(build_setup(cfg, workload))
    record = simulator.run()
    wall = time.perf_counter() - start
    figures = {"requests": len(record.requests), "finished": int((record.requests["status"] == "finished").sum()),
               "iterations": int(sum(i.iterations for i in simulator.instances)), "tokens": record.total_tokens,
               "simulated_s": record.end_s, "last_arrival_s": float(workload["arrival_s"].iloc[-1]),
               "wall_s": wall, "peak_gib": peak_gib(), "validate_s": None, "validate_peak_gib": None}
    if check:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            empty = record.requests.iloc[:0][["request_id"]].assign(index=0, time_s=0.0)
            write_run_chunked(Run(record.requests, empty, record.events(), {"end_s": record.end_s}),
                              record.token_chunks(STREAM_TOKENS), Path(folder) / "run")
        figures["validate_s"], figures["validate_peak_gib"] = time.perf_counter() - start, peak_gib()
    return figures


def run_fresh(name: str, check: bool, rate: float | None) -> dict:
    command = [sys.executable, __file__, "--measure", name] + ([] if check else ["--no-validate"])
    command += [] if rate is None else ["--rate", str(rate)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def report(results: dict[str, tuple[Scenario, dict]]) -> None:
    print(f"{'scenario':<11} {'setup':<26} {'rate':>5} {'requests':>10} {'iterations':>11} {'tokens':>12} "
          f"{'wall s':>7} {'req/s':>8} {'it/s':>9} {'tokens/s':>10} {'peak GiB':>8} {'x Vidur req':>11} "
          f"{'x Vidur it':>10} {'write s':>10}")
    for name, (s, r) in results.items():
        wall = r["wall_s"]
        validated = "-" if r["validate_s"] is None else f"{r['validate_s']:.2f}"
        print(f"{name:<11} {s.title:<26} {s.rate:>5g} {r['requests']:>10,} {r['iterations']:>11,} {r['tokens']:>12,} "
              f"{wall:>7.2f} {r['requests'] / wall:>8,.0f} {r['iterations'] / wall:>9,.0f} "
              f"{r['tokens'] / wall:>10,.0f} {r['peak_gib']:>8.2f} {r['requests'] / wall / VIDUR_REQUESTS_S:>11.1f} "
              f"{r['iterations'] / wall / VIDUR_ITERATIONS_S:>10.1f} {validated:>10}")
    for name, (s, r) in results.items():
        print(f"{name}: {r['finished']:,} finished; simulated {r['simulated_s']:,.0f} s, last arrival "
              f"{r['last_arrival_s']:,.0f} s" + ("" if r["validate_peak_gib"] is None
                                                 else f"; peak while writing {r['validate_peak_gib']:.2f} GiB"))
    verdicts(results)


def verdicts(results: dict[str, tuple[Scenario, dict]]) -> None:
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for name in ("one", "one-llama2"):
        if name not in results:
            continue
        r = results[name][1]
        requests_s, iterations_s = r["requests"] / r["wall_s"], r["iterations"] / r["wall_s"]
        print(f"{name}: target >= {TARGET_REQUESTS_S:,} requests/s: {requests_s:,.0f} -> "
              f"{mark(requests_s >= TARGET_REQUESTS_S)}; target >= {TARGET_ITERATIONS_S:,} iterations/s: "
              f"{iterations_s:,.0f} -> {mark(iterations_s >= TARGET_ITERATIONS_S)}")
    for name in ROUTED:
        if name in results:
            r = results[name][1]
            requests_s = r["requests"] / r["wall_s"]
            print(f"{name}: target >= {TARGET_REQUESTS_S:,} requests/s with the router at tick {ROUTER_TICK_S} s: "
                  f"{requests_s:,.0f} -> {mark(requests_s >= TARGET_REQUESTS_S)}")
    if "pd-1m" in results:
        r = results["pd-1m"][1]
        print(f"pd-1m: target 1,000,000 requests in < {TARGET_GIB:g} GiB: {r['peak_gib']:.2f} GiB -> "
              f"{mark(r['peak_gib'] < TARGET_GIB)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=["one", "one-llama2", "pd", "pd-1m"])
    parser.add_argument("--rate", type=float, help="override every chosen scenario's arrival rate (req/s)")
    parser.add_argument("--no-validate", action="store_true", help="skip writing the run folder (validated, Parquet, tokens in chunks)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        scenario = SCENARIOS[args.measure]
        if args.rate:
            scenario.rate = args.rate
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(measure(scenario, not args.no_validate)))
        return
    results = {}
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        if args.rate:
            scenario.rate = args.rate
        print(f"running {name}: {json.dumps(asdict(scenario))}", flush=True)
        results[name] = (scenario, run_fresh(name, scenario.validate and not args.no_validate, args.rate))
    report(results)


if __name__ == "__main__":
    main()
