"""The steady-state ceiling of a config: the arrival rate its instances can sustain, from
the iteration model and the workload's lengths, whatever the router does.

Decode: each request needs all its output tokens, and over its life holds on average
`ctx = E[prompt*out + out*(out+1)/2] / E[out]` tokens of KV per token it generates. With
every decode instance's KV full (less its watermark) it steps `n = KV / ctx` requests at
`a + b*n + c*KV` seconds a step. Prefill: each iteration fills its token budget with
prompts. A router can move work in time (parking defers a request's costly late tokens;
slack hides a backlog from the smooth scheme for a while), so a finite run can meet a
target above the ceiling; no run long enough can. An estimate (within a few percent of
a saturated simulation), not a bound to the token."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.core.scheduling import InstanceSpec
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup
from experiments.workloads.workload import generate
from router.snapshot import COLOCATED, DECODE, PREFILL


@dataclass(frozen=True)
class Ceiling:
    prefill_rate: float
    decode_rate: float

    @property
    def rate(self) -> float:
        return min(self.prefill_rate, self.decode_rate)

    @property
    def binds(self) -> str:
        return "decode KV" if self.decode_rate <= self.prefill_rate else "prefill"

    def describe(self) -> str:
        return (f"steady-state ceiling {self.rate:.3g} req/s ({self.binds} binds; decode {self.decode_rate:.3g}, "
                f"prefill {self.prefill_rate:.3g} req/s; iteration model, whatever the router)")


def _decode_tokens_per_s(spec: InstanceSpec, ctx: float) -> float:
    kv = (spec.total_blocks - spec.watermark_blocks) * spec.scheduler.block_size
    batch = min(kv / ctx, spec.scheduler.max_num_seqs)
    return batch / spec.perf.decode_time(batch, batch * ctx)


def _prefill_prompts_per_s(spec: InstanceSpec, prompt: np.ndarray) -> float:
    mean, mean_sq = float(prompt.mean()), float((prompt ** 2).mean())
    per_step = max(1.0, min(spec.scheduler.max_num_batched_tokens / mean, spec.scheduler.max_num_seqs))
    return per_step / spec.perf.prefill_time(per_step * mean, per_step * mean_sq)


def instance_ceiling(specs: list[InstanceSpec], workload: pd.DataFrame) -> Ceiling:
    """The ceiling of these instances serving requests of `workload`'s lengths. A
    colocated instance shares its time: 1/rate = 1/prefill rate + 1/decode rate."""
    prompt = workload["prompt_tokens"].to_numpy(np.float64)
    out = workload["output_tokens"].to_numpy(np.float64)
    ctx = float((prompt * out + out * (out + 1) / 2).sum() / out.sum())
    prefill = decode = 0.0
    for spec in specs:
        prompts_per_s = _prefill_prompts_per_s(spec, prompt)
        requests_per_s = _decode_tokens_per_s(spec, ctx) / float(out.mean())
        if spec.role == PREFILL:
            prefill += prompts_per_s
        elif spec.role == DECODE:
            decode += requests_per_s
        elif spec.role == COLOCATED:
            shared = 1.0 / (1.0 / prompts_per_s + 1.0 / requests_per_s)
            prefill, decode = prefill + shared, decode + shared
    return Ceiling(prefill, decode)


def ceiling(config: ExperimentConfig) -> Ceiling:
    """The ceiling of `config`'s cluster under its workload (lengths drawn with its seed)."""
    workload = generate(config.workload, config.seed)
    return instance_ceiling(build_setup(config, workload).instances, workload)
