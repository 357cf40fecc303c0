"""Profiling a real engine for `pdlab calibrate --engine vllm|hf`: iterations of known
shape run on one engine in this process (prefill-only steps of one or two prompts,
decode-only steps over batch sizes and contexts), timed, one profile row each
(the columns `pdlab calibrate` fits), each the median of its repeats: a busy 2-core
machine has outliers that a fit on relative error would chase."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pandas as pd

from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec, SchedulerConfig
from cluster.core.tables import STEP_SHAPE
from cluster.engines.backends import EngineSpec
from cluster.hardware.perfmodel import IterationModel
from router.snapshot import COLOCATED

PREFILL_LENGTHS = (16, 64, 128, 256, 512, 1024)
DECODE_BATCHES = (1, 2, 4, 8, 16)
DECODE_CONTEXTS = (32, 256, 1024)
DECODE_STEPS = 5
PLACEHOLDER = IterationModel(prefill=(0.001, 0.0, 0.0), decode=(0.001, 0.0, 0.0))


class Profiler:
    def __init__(self, backend: str, model_path: str, block_size: int, blocks: int, index: int = 0) -> None:
        config = SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=4096, block_size=block_size)
        spec = InstanceSpec(index, COLOCATED, PLACEHOLDER, config, blocks, 0.0, 1e9)
        self.engine = EngineSpec(backend, spec, model_path=model_path)()
        self.ids = itertools.count()
        self.rows: list[tuple[int, int, int, int, float]] = []

    def step(self) -> tuple[float, list[int]]:
        """One iteration: its seconds and the requests that got a token."""
        end = self.engine.begin(0.0)
        return end, self.engine.finish().tokens

    def drain(self) -> None:
        while self.engine.begin(0.0) is not None:
            self.engine.finish()

    def prefill(self, lengths: tuple[int, ...]) -> None:
        for length in lengths:
            self.engine.add(Request(next(self.ids), "profile", 0.0, length, 1))
        seconds, tokens = self.step()
        if len(tokens) == len(lengths):
            self.rows.append((sum(lengths), sum(n * n for n in lengths), 0, 0, seconds))
        self.drain()

    def decode(self, batch: int, context: int) -> None:
        requests = [Request(next(self.ids), "profile", 0.0, context, DECODE_STEPS + 2) for _ in range(batch)]
        for request in requests:
            self.engine.add(request)
        started = set()
        while len(started) < batch:
            started |= set(self.step()[1])
        times = [seconds for seconds, tokens in (self.step() for _ in range(DECODE_STEPS)) if len(tokens) == batch]
        if times:
            self.rows.append((0, 0, batch, batch * (context + DECODE_STEPS // 2), float(np.median(times))))
        self.drain()

    def run_on_thread(self, repeats: int) -> pd.DataFrame:
        result: list = []
        worker = threading.Thread(target=lambda: result.append(self.run(repeats)))
        worker.start()
        worker.join()
        return result[0]

    def run(self, repeats: int, progress=None) -> pd.DataFrame:
        self.prefill((64,))
        self.decode(2, 64)
        self.rows.clear()
        plan = [("prefill", (n,)) for n in PREFILL_LENGTHS] + [("prefill", (n // 2, n - n // 2))
                                                              for n in PREFILL_LENGTHS[1:]]
        plan += [("decode", (b, c)) for b in DECODE_BATCHES for c in DECODE_CONTEXTS]
        for index, (kind, shape) in enumerate(plan * repeats):
            self.prefill(shape) if kind == "prefill" else self.decode(*shape)
            if progress:
                progress(index + 1, len(plan) * repeats)
        rows = pd.DataFrame(self.rows, columns=[*STEP_SHAPE, "time_s"])
        return rows.groupby(list(STEP_SHAPE), as_index=False)["time_s"].median()


def profile_engine(backend: str, model_path: str, block_size: int = 32, blocks: int = 1024, repeats: int = 3,
                   address: str | None = None, engines: int = 1) -> pd.DataFrame:
    """Profile rows of a `backend` engine serving the model at `model_path`, measured
    where live workers run it: in Ray actors (on the cluster at `address`, else a local
    Ray), steps on a thread of their own. `engines` profile at once, each on its own
    core, as in a cluster whose every core runs an engine: cores that share a host's
    caches and memory slow each other down (here a busy neighbour made small decode
    steps 1.5x slower)."""
    import ray

    from cluster.live.raycluster import connect

    connect(address)
    profilers = [ray.remote(Profiler).options(num_cpus=0.1).remote(backend, model_path, block_size, blocks, index)
                 for index in range(engines)]
    try:
        rows = pd.concat(ray.get([p.run_on_thread.remote(repeats) for p in profilers]), ignore_index=True)
    finally:
        for profiler in profilers:
            ray.kill(profiler)
    return rows.groupby(list(STEP_SHAPE), as_index=False)["time_s"].median()
