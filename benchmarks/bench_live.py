"""Benchmark: the live Ray runtime's two throughput targets, on this machine.

Streaming: colocated Llama-3.1-8B instances on A100-80GB, each given a full decode
batch at once (256 requests of 32 prompt and `--output` output tokens, arriving
together), run live on Ray with the driver built as `experiments.runner._run_live`
builds it, and the same config in the simulator. The simulator's tokens over its
serving span (first arrival to last token, engine seconds, divided by the speed-up)
is the modelled rate; the live run's tokens over its serving span in wall seconds is
the achieved rate. Target: achieved / modelled >= 0.95 at >= 20,000 tokens/s.
Also printed: the driver's report lag (worker sends a step, driver handles it) and
the driver's CPU use while it ran.

KV transfer: one prefill actor holds a prefilled request, another pulls its KV
(`export_kv` on the source, `pull` on the target, as `LiveRuntime.pull` does) with
no modelled link time, at kv_scale 1 and Llama-3.1-8B's 128 KiB per token. `real_s`
(the target's time from the call to the checked bytes) gives the bandwidth, set
against numpy's copy of a buffer of the same size (best of several; the target's
baseline), a copy into freshly mapped pages (as a new object store entry is written)
and XXH3 (the target checks each chunk as it lands). Target: transfer / memcpy >= 0.5
for payloads of a request's KV (from 64 MiB: 512 tokens; the Azure conversation trace's
median prompt is 1,020 tokens, 128 MiB); smaller ones are bound by two actor calls'
latency, printed in ms. About 40 s; `--quick` about 12 s.

    .venv/bin/python benchmarks/bench_live.py [--quick] [--instances 2 4] [--output 512] [--speedup 1] [--rate R]
    RAY_preallocate_plasma_memory=1 .venv/bin/python benchmarks/bench_live.py --skip streaming --object-store-gib 2
"""
from __future__ import annotations

import argparse
import logging
import mmap
import os
import statistics
import time
from functools import partial

import numpy as np

TARGET_TOKENS_S, TARGET_STREAM_RATIO, TARGET_KV_RATIO = 20_000, 0.95, 0.5
BATCH, PROMPT = 256, 32
BYTES_PER_TOKEN = 131_072
BANDWIDTH_MIB = 64
GIB = 2**30


def stream_config(instances: int, output: int, speedup: float, rate: float, runtime: str):
    from experiments.config.experiment import ExperimentConfig

    return ExperimentConfig.model_validate({
        "name": "bench-live", "seed": 0, "runtime": runtime,
        "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                    "instances": [{"role": "colocated", "count": instances}],
                    "scheduler": {"max_num_seqs": BATCH}},
        "ray": {"speedup": speedup},
        "workload": {"requests": BATCH * instances, "arrival": {"process": "constant", "rate": rate},
                     "lengths": {"dist": "fixed", "prompt": PROMPT, "output": output}},
    })


def simulated(instances: int, output: int, speedup: float, rate: float) -> dict:
    from experiments.runs.runner import run_config

    run = run_config(stream_config(instances, output, speedup, rate, "sim"))
    span = float(run.tokens["time_s"].max() - run.requests["arrival_s"].min())
    return {"tokens": len(run.tokens), "span_s": span / speedup}


def live(instances: int, output: int, speedup: float, rate: float) -> dict:
    from cluster.live.driver import LiveRuntime
    from cluster.live.raycluster import start_workers, stop
    from experiments.runs.runner import build_setup, live_options
    from experiments.workloads.workload import generate

    config = stream_config(instances, output, speedup, rate, "ray")
    plan = build_setup(config, generate(config.workload, config.seed))
    workers, options = live_options(config)
    actors, groups = start_workers(plan.instances, [int(n) for n in plan.table.node], workers)
    try:
        runtime = LiveRuntime(plan, actors, options)
        wall, cpu = time.perf_counter(), time.process_time()
        record = runtime.run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        stop(actors, groups)
    first = min(r.arrival for r in plan.requests)
    lag = np.frombuffer(runtime.lag, dtype=np.float64) * 1e3
    return {"tokens": len(record.source), "span_s": (float(record.source.max()) - first) / speedup,
            "run_s": wall, "cpu": cpu / wall, "finished": int((record.requests["status"] == "finished").sum()),
            "requests": len(record.requests), "reports": len(lag),
            "lag_ms": [float(np.percentile(lag, q)) for q in (50, 90, 99)] + [float(lag.max())]}


def streaming(args) -> list[tuple[int, dict, dict]]:
    rows = []
    for n in args.instances:
        print(f"streaming: {n} colocated x {BATCH} requests of {PROMPT}+{args.output} tokens, "
              f"speedup {args.speedup:g}, {args.rate:g} arrivals per engine second", flush=True)
        rows.append((n, simulated(n, args.output, args.speedup, args.rate),
                     live(n, args.output, args.speedup, args.rate)))
    print(f"\n{'instances':>9} {'tokens':>10} {'finished':>9} {'run s':>7} {'span s':>7} {'sim span s':>10} "
          f"{'tokens/s':>9} {'modelled':>9} {'ratio':>6} {'driver CPU':>10} {'reports':>8} "
          f"{'lag p50/p90/p99/max ms':>24}")
    for n, sim, got in rows:
        achieved, modelled = got["tokens"] / got["span_s"], sim["tokens"] / sim["span_s"]
        lag = "/".join(f"{x:.1f}" for x in got["lag_ms"])
        print(f"{n:>9} {got['tokens']:>10,} {got['finished']:>4}/{got['requests']:<4} {got['run_s']:>7.2f} "
              f"{got['span_s']:>7.2f} {sim['span_s']:>10.2f} {achieved:>9,.0f} {modelled:>9,.0f} "
              f"{achieved / modelled:>6.3f} {got['cpu']:>10.0%} {got['reports']:>8,} {lag:>24}")
    return rows


def kv_actors(transport: str):
    import ray

    from cluster.core.request import Request
    from cluster.core.scheduling import SchedulerConfig
    from cluster.engines.kvbytes import EmulatedKV
    from cluster.engines.model import ModelEngine
    from cluster.hardware.perfmodel import IterationModel
    from cluster.live.actor import WorkerActor
    from cluster.live.raycluster import MAX_CONCURRENCY
    from router.snapshot import DECODE, PREFILL

    flat = IterationModel(prefill=(0.001, 0.0, 0.0), decode=(0.001, 0.0, 0.0))
    remote = ray.remote(WorkerActor).options(num_cpus=0, max_concurrency=MAX_CONCURRENCY)
    inbox = 128 << 20 if transport == "shm" else 0
    source, target = (remote.remote(i, partial(ModelEngine, i, role, flat, SchedulerConfig(), 1000, BYTES_PER_TOKEN,
                                               1e9, EmulatedKV(BYTES_PER_TOKEN, 1.0, seed=i)), 1.0,
                                    f"pdlab-bench-{os.getpid()}-{i}" if inbox else "", inbox)
                      for i, role in ((0, PREFILL), (1, DECODE)))
    ray.get(source.submit.remote(Request(0, "default", 0.0, 16, 8)))
    deadline = time.monotonic() + 30
    while not any(r.step and 0 in r.step.prefilled for r in ray.get(source.poll.remote(1.0))):
        if time.monotonic() > deadline:
            raise RuntimeError("the source actor did not prefill its request")
    return source, target


def transfer(source, target, tokens: int, transport: str) -> tuple[float, int, float]:
    """One pull of `tokens` tokens' KV: (the target's real_s, bytes, the driver's wall s)."""
    import ray

    from cluster.live.actor import LinkTime

    start = time.perf_counter()
    exported = [source, 0, tokens] if transport == "shm" else [source.export_kv.remote(0, 0, tokens, False)]
    pulled = ray.get(target.pull.remote(0, exported, 0, False, LinkTime(0.0, 0.0), 30.0))
    if not pulled.ok:
        raise RuntimeError(f"pull failed: {pulled.reason}")
    return pulled.real_s, pulled.nbytes, time.perf_counter() - start


def best(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def fresh_copy(data: np.ndarray) -> float:
    """Seconds to copy `data` into pages never touched before (as a new object store entry is)."""
    with mmap.mmap(-1, data.nbytes) as memory:
        target = np.frombuffer(memory, np.uint8)
        start = time.perf_counter()
        np.copyto(target, data)
        seconds = time.perf_counter() - start
        del target
    return seconds


def local_rates(nbytes: int, repeats: int) -> tuple[float, float, float]:
    """Bytes per second of numpy's copy (warm buffers), a copy into fresh pages, and the XXH3 checksum."""
    from migration.transport import checksum

    data = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    copy = np.empty_like(data)
    return (nbytes / best(lambda: np.copyto(copy, data), repeats),
            nbytes / min(fresh_copy(data) for _ in range(repeats)), nbytes / best(lambda: checksum(data), repeats))


def kv_transfer(args) -> list[dict]:
    import ray

    source, target = kv_actors(args.transport)
    rows = []
    try:
        transfer(source, target, max(args.sizes) * 2**20 // BYTES_PER_TOKEN, args.transport)
        for mib in args.sizes:
            tokens = mib * 2**20 // BYTES_PER_TOKEN
            runs = [transfer(source, target, tokens, args.transport) for _ in range(args.repeats)]
            memcpy, fresh, hashed = local_rates(tokens * BYTES_PER_TOKEN, args.repeats)
            nbytes = runs[0][1]
            rows.append({"mib": mib, "nbytes": nbytes, "best": nbytes / min(r[0] for r in runs),
                         "median": nbytes / statistics.median(r[0] for r in runs),
                         "driver": nbytes / min(r[2] for r in runs), "memcpy": memcpy, "fresh": fresh,
                         "hash": hashed, "transport": args.transport})
    finally:
        ray.get([actor.stop.remote() for actor in (source, target)])
        for actor in (source, target):
            ray.kill(actor)
    print(f"\nKV transfer through {args.transport}")
    print(f"{'MiB':>5} {'best GiB/s':>10} {'median':>7} {'driver':>7} {'memcpy':>7} {'fresh':>6} {'hash':>6} "
          f"{'ratio best':>10} {'ratio median':>12} {'median/fresh':>12}")
    for r in rows:
        print(f"{r['mib']:>5} {r['best'] / GIB:>10.2f} {r['median'] / GIB:>7.2f} {r['driver'] / GIB:>7.2f} "
              f"{r['memcpy'] / GIB:>7.2f} {r['fresh'] / GIB:>6.2f} {r['hash'] / GIB:>6.2f} "
              f"{r['best'] / r['memcpy']:>10.3f} {r['median'] / r['memcpy']:>12.3f} "
              f"{r['median'] / r['fresh']:>12.3f}")
    return rows


def verdicts(stream: list, kv: list) -> None:
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print()
    for n, sim, got in stream:
        achieved, modelled = got["tokens"] / got["span_s"], sim["tokens"] / sim["span_s"]
        print(f"streaming, {n} instances: {achieved:,.0f} of {modelled:,.0f} modelled tokens/s "
              f"(ratio {achieved / modelled:.3f}, target >= {TARGET_STREAM_RATIO} at >= {TARGET_TOKENS_S:,}) -> "
              f"{mark(achieved / modelled >= TARGET_STREAM_RATIO and achieved >= TARGET_TOKENS_S)}")
    for r in kv:
        verdict = mark(r['median'] / r['memcpy'] >= TARGET_KV_RATIO) if r['mib'] >= BANDWIDTH_MIB else \
            f"latency-bound below {BANDWIDTH_MIB} MiB: {r['nbytes'] / r['median'] * 1e3:.2f} ms a transfer"
        print(f"KV transfer ({r['transport']}), {r['mib']} MiB: {r['median'] / GIB:.2f} GiB/s median against memcpy "
              f"{r['memcpy'] / GIB:.2f} GiB/s (ratio {r['median'] / r['memcpy']:.3f}, target >= "
              f"{TARGET_KV_RATIO}) -> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 instances, 128 output tokens, 4 and 16 MiB")
    parser.add_argument("--instances", type=int, nargs="+", default=[2, 4], help="colocated instances per run")
    parser.add_argument("--output", type=int, default=512, help="output tokens per request")
    parser.add_argument("--speedup", type=float, default=1.0, help="ray.speedup (engine seconds per wall second)")
    parser.add_argument("--rate", type=float, default=100_000.0,
                        help="arrivals per engine second (the default sends every batch at once)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64, 128], help="KV payloads, MiB")
    parser.add_argument("--repeats", type=int, default=7, help="transfers (and copies) per size")
    parser.add_argument("--skip", choices=["streaming", "kv"], help="leave one part out")
    parser.add_argument("--transport", choices=["object_store", "shm"], default="shm",
                        help="how KV travels between the two actors (default shm, the same-node path)")
    parser.add_argument("--object-store-gib", type=float, help="Ray's object store size (default: Ray's)")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.output, args.sizes, args.repeats = [2], 128, [4, 16], 3
    import ray

    if not ray.is_initialized():
        store = int(args.object_store_gib * GIB) if args.object_store_gib else None
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=store)
    stream = [] if args.skip == "streaming" else streaming(args)
    kv = [] if args.skip == "kv" else kv_transfer(args)
    verdicts(stream, kv)


if __name__ == "__main__":
    main()
