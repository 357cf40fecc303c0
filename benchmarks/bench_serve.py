"""Benchmark: the front door under load. `pdlab serve configs/serve.yaml` (1 prefill + 1
decode emulated A100, Llama-3.1-8B) is driven on loopback by `vllm bench serve` at
rising Poisson rates; for each, the request rate the client held against the rate it
offered, and what the front door added to each request's TTFT and E2E (the client's
own figures minus the server's run folder, matched request by request), p50 and p99.

    .venv/bin/python benchmarks/bench_serve.py [--rates 10 25 50] [--requests 300]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.runs.imports import read_any
from experiments.scoring.compare import added_latency
from experiments.serve import drive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 25.0, 50.0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--config", default="configs/serve.yaml")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = drive.start(args.config, folder / "run")
    results = {}
    try:
        for rate in args.rates:
            path = folder / f"rate-{rate:g}.json"
            done = drive.vllm_bench(server, path, args.requests, rate, input_len=128, output_len=32,
                                    prefix=f"r{rate:g}-")
            if done.returncode:
                raise SystemExit(f"vllm bench serve failed at {rate:g}/s: {done.stderr[-2000:]}")
            results[rate] = path
    finally:
        code, _, stderr = server.stop()
    if code:
        raise SystemExit(f"pdlab serve exited {code}: {stderr[-2000:]}")
    run = read_any(folder / "run")
    table = Table(title=f"pdlab serve on loopback, {args.requests} requests a rate (started in {server.started_s:.1f} s)")
    for column in ("offered (req/s)", "held (req/s)", "held/offered", "failed", "added TTFT p50 (ms)",
                   "p99 (ms)", "added E2E p50 (ms)", "p99 (ms)"):
        table.add_column(column, justify="right")
    for rate, path in results.items():
        result = json.loads(path.read_text())
        added = added_latency(read_any(path), run)
        ttft, e2e = added["ttft_s"], added["e2e_s"]
        table.add_row(f"{rate:g}", f"{result['request_throughput']:.2f}", f"{result['request_throughput'] / rate:.2f}x",
                      str(result["failed"]), f"{ttft['p50'] * 1e3:.1f}", f"{ttft['p99'] * 1e3:.1f}",
                      f"{e2e['p50'] * 1e3:.1f}", f"{e2e['p99'] * 1e3:.1f}")
    Console(width=140).print(table)
    print(f"(a Poisson client holds its offered rate only on average: held/offered of a finite run varies; "
          f"files in {folder})")


if __name__ == "__main__":
    main()
