"""Benchmark: one routing decision end to end, as the runtimes make it: the control
plane builds the snapshot (the waiting requests, and every decoding request the
policy reads, from the runs' SLO state) and the policy decides. The cluster is a
simulated one in full flight: 64 instances (16 prefill + 48 decode, Llama-3.1-8B on
A100-80GB) with about 2,000 requests decoding. Kinds of decision: a new request to
dispatch (`arrival`), a prefilled one to hand off (`prefill_done`), the periodic look
at every running request (`tick`), and a busy tick with 4 requests of each kind
waiting. Target (issue 15): under 100 microseconds on average.

    .venv/bin/python benchmarks/bench_decision.py [--decisions N]
"""
from __future__ import annotations

import argparse
import time

from cluster.core.request import HANDOFF
from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup
from experiments.workloads.workload import generate
from router.registry import make_policy

POLICIES = ("round_robin", "least_loaded", "classic_goodput", "smooth_goodput")
TARGET_US = 100.0


def cluster_in_flight() -> Simulator:
    """A simulator stopped at 40 s of a run that keeps about 2,000 requests decoding."""
    config = ExperimentConfig.model_validate({
        "seed": 0, "horizon_s": 40.0,
        "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                    "instances": [{"role": "prefill", "count": 16}, {"role": "decode", "count": 48}]},
        "workload": {"requests": 8000, "arrival": {"process": "poisson", "rate": 100.0},
                     "lengths": {"dist": "fixed", "prompt": 256, "output": 1000}}})
    simulator = Simulator(build_setup(config, generate(config.workload, config.seed)))
    simulator.run()
    return simulator


def waiting(simulator: Simulator, count: int, prefilled: bool) -> list:
    """`count` requests that have not arrived yet, set up as waiting for a dispatch or,
    `prefilled`, for a hand-off on a prefill instance."""
    future = [r for r in simulator.requests.values() if r.arrival > simulator.clock and r.state == "waiting"]
    chosen = future[:count] if not prefilled else future[-count:]
    for request in chosen if prefilled else ():
        request.state, request.instance, request.context = HANDOFF, 0, request.prompt
    return chosen


def decisions(simulator: Simulator) -> dict[str, tuple[str, list, list]]:
    new, prefilled = waiting(simulator, 4, False), waiting(simulator, 4, True)
    return {"arrival": ("arrival", new[:1], []), "prefill_done": ("prefill_done", [], prefilled[:1]),
            "tick": ("tick", [], []), "busy tick": ("tick", new, prefilled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1000)
    args = parser.parse_args()
    simulator = cluster_in_flight()
    control = simulator.control
    running = sum(len(i.running) for i in simulator.instances)
    kinds = decisions(simulator)
    print(f"64 instances, {running} requests decoding at {simulator.clock:g} s; mean microseconds per decision "
          f"(snapshot + decide) over {args.decisions} (target < {TARGET_US:g})")
    print(f"{'policy':<16}" + "".join(f"{kind:>14}" for kind in kinds))
    worst = 0.0
    for name in POLICIES:
        row = []
        for event, new, prefilled in kinds.values():
            control.policy = control.setup.policy = make_policy(name)
            control.to_dispatch = {r.id: r for r in new}
            control.to_hand_off = {r.id: r for r in prefilled}
            control.policy.decide(control.snapshot(event))
            start = time.perf_counter()
            for _ in range(args.decisions):
                control.policy.decide(control.snapshot(event))
            row.append((time.perf_counter() - start) / args.decisions * 1e6)
        worst = max(worst, *row)
        print(f"{name:<16}" + "".join(f"{us:>14.1f}" for us in row))
    verdict = "met" if worst < TARGET_US else f"NOT met (slowest {worst:.0f} us, {worst / TARGET_US:.1f}x the target)"
    print(f"target < {TARGET_US:g} us for every policy and decision: {verdict}")


if __name__ == "__main__":
    main()
