"""Benchmark: a 200-point simulated sweep spread over a Ray cluster, one node against
two (each node 1 CPU, started on this machine on loopback), beside the same sweep in
one local process. Timed: the whole `pdlab sweep` command (joining the cluster
included; starting the nodes not). Prints each wall time and the speed-up of two
nodes over one; the results tables are checked equal.

    .venv/bin/python benchmarks/bench_sweep_cluster.py [--requests 400] [--seeds 25]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from cluster.live.localnodes import LocalNodes, client_env

PDLAB = str(Path(sys.executable).with_name("pdlab"))


def sweep_file(folder: Path, requests: int, seeds: int) -> Path:
    spec = {"name": "bench-cluster",
            "base": {"cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                                 "instances": [{"role": "prefill", "count": 2}, {"role": "decode", "count": 2}]},
                     "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": 10.0},
                                  "lengths": {"dist": "dataset", "name": "sharegpt", "max_total": 4096}}},
            "sweep": {"rates": [5, 10, 15, 20], "policies": ["round_robin", "least_loaded"],
                      "seeds": list(range(seeds))}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed_sweep(path: Path, out: Path, address: str | None) -> tuple[float, pd.DataFrame]:
    command = [PDLAB, "sweep", str(path), "--out", str(out), "--no-runs"]
    command += ["--address", address] if address else []
    start = time.perf_counter()
    subprocess.run(command, env=client_env(), check=True, capture_output=True)
    return time.perf_counter() - start, pd.read_parquet(out / "results.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=25, help="seeds per (rate, policy): 8 x seeds points")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = sweep_file(folder, args.requests, args.seeds)
        walls, tables = {}, {}
        walls["local, 1 process"], tables["local"] = timed_sweep(path, folder / "local", None)
        for nodes in (1, 2):
            with LocalNodes([1] * nodes) as cluster:
                key = f"Ray, {nodes} node{'s' * (nodes > 1)} x 1 CPU"
                walls[key], tables[key] = timed_sweep(path, folder / f"nodes{nodes}", cluster.address)
    points = len(tables["local"])
    print(f"{points} points, {args.requests} requests each")
    print(f"{'where':<24} {'wall s':>8} {'points/s':>9}")
    for key, wall in walls.items():
        print(f"{key:<24} {wall:>8.2f} {points / wall:>9.1f}")
    one, two = walls["Ray, 1 node x 1 CPU"], walls["Ray, 2 nodes x 1 CPU"]
    print(f"two nodes over one: x{one / two:.2f} (ideal x2.00)")
    for key, table in tables.items():
        pd.testing.assert_frame_equal(table, tables["local"])
    print("results tables: identical in all three")


if __name__ == "__main__":
    main()
