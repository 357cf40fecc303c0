"""Benchmark: the whole summary and per-request table for a large run.

Writes a synthetic run (default 100,000 requests, about 10 million tokens) as
Parquet, then, in a fresh process, reads it and scores it, printing seconds,
tokens per second and the process's peak memory. Target (issue 2): under 3 s
and 2 GiB on a 2-core machine.

    .venv/bin/python benchmarks/bench_metrics.py [--requests N] [--mean-output M]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(folder: str) -> dict:
    from experiments.runs.runformat import read_run
    from experiments.scoring.metrics import score

    start = time.perf_counter()
    run = read_run(folder)
    read = time.perf_counter()
    table, summary = score(run)
    done = time.perf_counter()
    return {"requests": len(run.requests), "tokens": len(run.tokens), "read_s": read - start,
            "score_s": done - read, "total_s": done - start,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--mean-output", type=int, default=103)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    from experiments.runs.runformat import write_run
    from experiments.runs.synthetic import synthetic_run

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        write_run(synthetic_run(requests=args.requests, rate=50.0, mean_output=args.mean_output, seed=1), folder)
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--measure", str(folder)], check=True,
                                          capture_output=True, text=True).stdout) for _ in range(args.repeats)]
    print(f"requests {runs[0]['requests']:,}  tokens {runs[0]['tokens']:,}  (each repeat in a fresh process)")
    print(f"{'repeat':>6} {'read+validate s':>16} {'score s':>8} {'total s':>8} {'M tokens/s':>11} {'peak GiB':>9}")
    for i, r in enumerate(runs, 1):
        print(f"{i:>6} {r['read_s']:>16.2f} {r['score_s']:>8.2f} {r['total_s']:>8.2f} "
              f"{r['tokens'] / r['total_s'] / 1e6:>11.2f} {r['peak_rss_gib']:>9.2f}")
    best = min(runs, key=lambda r: r["total_s"])
    print(f"best total {best['total_s']:.2f} s (target < 3 s), "
          f"peak memory {max(r['peak_rss_gib'] for r in runs):.2f} GiB (target < 2 GiB)")


if __name__ == "__main__":
    main()
