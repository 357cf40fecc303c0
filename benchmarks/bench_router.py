"""Benchmark: the time of one routing decision at 64 instances (16 prefill + 48
decode) and 2,000 running requests, for each kind of decision a policy makes: a new
request to dispatch (`arrival`), a prefilled one to hand off (`prefill_done`), the
periodic look at every running request for migrations and preemptions (`tick`), and
a busy tick with 4 requests of each kind waiting too. Target (issue 4): under 100
microseconds on average for smooth_goodput and classic_goodput.

    .venv/bin/python benchmarks/bench_router.py [--decisions N]
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from router.registry import make_policy
from router.slo import SLO
from router.snapshot import DECODE, PREFILL, InstanceTable, RequestView, Snapshot

POLICIES = ("round_robin", "least_loaded", "classic_goodput", "smooth_goodput")


def snapshot(seed: int = 0, instances: int = 64, running: int = 2000) -> Snapshot:
    rng = np.random.default_rng(seed)
    roles = [PREFILL] * (instances // 4) + [DECODE] * (instances - instances // 4)
    table = InstanceTable(roles, [i // 8 for i in range(instances)], [20_000] * instances, [200] * instances, 16,
                          [(0.01, 7e-5, 3.6e-9)] * instances, [(0.012, 4e-5, 3e-7)] * instances)
    decode = [i for i, r in enumerate(roles) if r == DECODE]
    slo = SLO()
    views = []
    for k in range(running):
        instance = decode[k % len(decode)]
        context = int(rng.integers(100, 4000))
        views.append(RequestView(k, "default", -rng.uniform(0, 60), context, 500, int(rng.integers(1, 400)), instance,
                                 float(rng.exponential(0.2)), float(rng.exponential(1.0)), -0.01, context,
                                 bool(rng.random() < 0.2), slo))
        table.running[instance] += 1
        table.context_tokens[instance] += context
        table.free_blocks[instance] -= context // 16
    for i in decode:
        table.step_time_s[i] = table.view.decode_step_s(i)
    table.queued_tokens[:len(roles) // 4] = rng.integers(0, 8000, len(roles) // 4)
    new = tuple(RequestView(running + k, "default", -0.01 * k, 800, 300, 0, -1, 0.0, 0.1, math.nan, 0, False, slo)
                for k in range(4))
    prefilled = tuple(RequestView(running + 4 + k, "default", -0.5, 800, 300, 1, k, 0.0, 0.1, -0.01, 800, False, slo)
                      for k in range(4))
    running: dict[int, list[RequestView]] = {}
    for view in views:
        running.setdefault(view.instance, []).append(view)
    return Snapshot(100.0, "tick", table.view, new, prefilled, (), {i: tuple(v) for i, v in running.items()})


def kinds(shot: Snapshot) -> dict[str, Snapshot]:
    return {
        "arrival": replace(shot, event="arrival", to_dispatch=shot.to_dispatch[:1], to_hand_off=(), running={}),
        "prefill_done": replace(shot, event="prefill_done", to_dispatch=(), to_hand_off=shot.to_hand_off[:1],
                                running={}),
        "tick": replace(shot, to_dispatch=(), to_hand_off=()),
        "busy tick": shot,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    args = parser.parse_args()
    shots = kinds(snapshot())
    print(f"64 instances, {sum(len(v) for v in shots['tick'].running.values())} running requests; "
          f"mean microseconds per decision over {args.decisions} (target < 100 for classic and smooth)")
    print(f"{'policy':<16}" + "".join(f"{kind:>14}" for kind in shots))
    for name in POLICIES:
        row = []
        for shot in shots.values():
            policy = make_policy(name)
            policy.decide(shot)
            start = time.perf_counter()
            for _ in range(args.decisions):
                policy.decide(shot)
            row.append((time.perf_counter() - start) / args.decisions * 1e6)
        print(f"{name:<16}" + "".join(f"{us:>14.1f}" for us in row))


if __name__ == "__main__":
    main()
