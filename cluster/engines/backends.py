"""Which engine a worker hosts (`ray.engine`): `emulated` (the performance model,
waited out, KV bytes of the modelled size), `hf` (a transformers model with the
project's own paged KV cache) or `vllm` (a vLLM engine, GPU or CPU build). An
`EngineSpec` is sent to the worker actor and called there, so a model loads where it runs."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.core.scheduling import InstanceSpec
from cluster.engines.kvbytes import EmulatedKV
from cluster.engines.model import ModelEngine
from cluster.engines.port import Engine

ENGINES = ("emulated", "hf", "vllm")
REAL_ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class EngineSpec:
    backend: str
    instance: InstanceSpec
    kv_scale: float = 0.01
    model_path: str = ""
    seed: int = 0
    threads: int = 1

    def __call__(self) -> Engine:
        spec = self.instance
        if self.backend == "emulated":
            return ModelEngine(spec, EmulatedKV(spec.kv_bytes_per_token, self.kv_scale, seed=spec.id))
        if self.backend == "hf":
            from cluster.engines.hf_engine import HFEngine

            return HFEngine(spec, self.model_path, self.seed, self.threads)
        if self.backend == "vllm":
            from cluster.engines.vllm_engine import VLLMEngine

            return VLLMEngine(spec, self.model_path, self.seed, self.threads)
        raise ValueError(f"ray.engine: expected one of {list(ENGINES)}, got {self.backend!r}")
