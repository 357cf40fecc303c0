"""How long one engine iteration takes, in seconds, per (model, hardware, tensor parallel).

prefill `a + b*sum(L) + c*sum(L*(L+past))`, decode `a + b*batch + c*sum(context)`,
from a published fit in `configs/perf/*.yaml` when one exists, else from a roofline
estimate; and how many tokens of KV cache an instance holds (docs/perfmodel.md).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, NonNegativeFloat, PositiveInt

from cluster.hardware.noise import NoiseSection, StepNoise, noise_as_mapping
from cluster.hardware.specs import CONFIGS, HardwareSpec, ModelSpec
from cluster.hardware.yamlfile import ConfigError, Strict, read_yaml

PERF_DIR = CONFIGS / "perf"
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
Coefficients = tuple[float, float, float]


class DoesNotFit(ValueError):
    """The weights of a model do not fit in the memory of an instance."""


def _coefficients(side: str, values) -> Coefficients:
    values = tuple(values)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                               or v < 0 for v in values):
        raise ValueError(f"{side}: expected three finite numbers >= 0 (a, b, c), got {values!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class IterationModel:
    prefill: Coefficients
    decode: Coefficients
    source: str = ""
    min_step: float = 0.0
    noise: StepNoise | None = None
    """How measured steps spread around these times (None: every step takes them)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefill", _coefficients("prefill", self.prefill))
        object.__setattr__(self, "decode", _coefficients("decode", self.decode))
        if not (math.isfinite(self.min_step) and self.min_step >= 0):
            raise ValueError(f"min_step: expected a finite number of seconds >= 0, got {self.min_step!r}")

    def prefill_time(self, tokens: int, tokens_sq: float) -> float:
        a, b, c = self.prefill
        t = a + b * tokens + c * tokens_sq
        return t if t > self.min_step else self.min_step

    def decode_time(self, batch: int, context: int) -> float:
        a, b, c = self.decode
        t = a + b * batch + c * context
        return t if t > self.min_step else self.min_step

    def step_time(self, prefill_tokens: int, prefill_sq: float, decode_batch: int, decode_context: int) -> float:
        if decode_batch <= 0:
            return self.prefill_time(prefill_tokens, prefill_sq) if prefill_tokens > 0 else 0.0
        if prefill_tokens <= 0:
            return self.decode_time(decode_batch, decode_context)
        pa, pb, pc = self.prefill
        da, db, dc = self.decode
        t = (pa if pa > da else da) + pb * prefill_tokens + pc * prefill_sq + db * decode_batch + dc * decode_context
        return t if t > self.min_step else self.min_step


@dataclass(frozen=True)
class Roofline:
    """Assumptions of the roofline estimate (docs/perfmodel.md shows how close it lands)."""
    prefill_mfu: float = 0.6
    memory_efficiency: float = 0.7
    step_overhead_s: float = 2e-3
    allreduce_latency_s: float = 20e-6

    def describe(self) -> str:
        return (f"prefill MFU {self.prefill_mfu:g}, HBM efficiency {self.memory_efficiency:g}, "
                f"step overhead {self.step_overhead_s * 1e3:g} ms, all-reduce latency {self.allreduce_latency_s * 1e6:g} us")


ROOFLINE = Roofline()


def _check_tp(tp: int) -> None:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp: expected a whole number of GPUs >= 1, got {tp!r}")


def kv_replication(model: ModelSpec, tp: int) -> float:
    """How many copies of each KV head an instance keeps: above kv_heads GPUs, heads are replicated."""
    return max(1.0, tp / model.kv_heads)


def _allreduce(model: ModelSpec, hardware: HardwareSpec, tp: int, r: Roofline) -> tuple[float, float]:
    """Fixed and per-token seconds of the two all-reduces per layer of tensor parallelism."""
    if tp == 1:
        return 0.0, 0.0
    count = 2 * model.layers
    ring_bytes = 2 * (tp - 1) / tp * model.hidden_size * model.bytes_per_element
    return count * r.allreduce_latency_s, count * ring_bytes / hardware.link("nvlink").bandwidth


def roofline_model(model: ModelSpec, hardware: HardwareSpec, tp: int, assumptions: Roofline = ROOFLINE) -> IterationModel:
    _check_tp(tp)
    r = assumptions
    flops = tp * hardware.bf16_flops
    bandwidth = tp * hardware.hbm_bandwidth * r.memory_efficiency
    weights_read = model.weight_bytes / bandwidth
    sync, sync_per_token = _allreduce(model, hardware, tp, r)
    overhead = r.step_overhead_s + sync
    prefill = (overhead,
               2 * model.params / (flops * r.prefill_mfu) + sync_per_token,
               4 * model.layers * model.heads * model.head_dim / (flops * r.prefill_mfu))
    decode = (overhead + weights_read,
              2 * model.params / flops + sync_per_token,
              model.kv_bytes_per_token * kv_replication(model, tp) / bandwidth)
    source = f"roofline estimate for {model.name} on {tp} x {hardware.name} ({r.describe()})"
    return IterationModel(prefill, decode, source, min_step=overhead + weights_read)


class PerfFile(Strict):
    model: str | None = None
    hardware: str | None = None
    tp: PositiveInt | None = None
    unit: Literal["s", "ms", "us"]
    prefill: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat]
    decode: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat]
    min_step: NonNegativeFloat = 0.0
    source: str = Field(min_length=1)
    noise: NoiseSection | None = None


def _read_perf(path: Path) -> PerfFile:
    return read_yaml(path, PerfFile)


def load_iteration_model(path: str | os.PathLike) -> IterationModel:
    spec = _read_perf(Path(path))
    scale = UNITS[spec.unit]
    return IterationModel(tuple(v * scale for v in spec.prefill), tuple(v * scale for v in spec.decode),
                          spec.source, spec.min_step * scale, spec.noise.noise() if spec.noise else None)


def write_iteration_model(path: str | os.PathLike, model: IterationModel, *, model_name: str | None = None,
                          hardware: str | None = None, tp: int | None = None) -> Path:
    """Write `model` as a perf YAML (unit s); with model, hardware and tp set, `iteration_model` can pick it up."""
    data = {"model": model_name, "hardware": hardware, "tp": tp, "unit": "s",
            "prefill": list(model.prefill), "decode": list(model.decode), "min_step": model.min_step,
            "source": model.source, "noise": noise_as_mapping(model.noise) if model.noise else None}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False,
                                     default_flow_style=None))
    return target


def published_fits(perf_dir: str | os.PathLike | None = None) -> dict[tuple[str, str, int], Path]:
    """(model, hardware, tp), names lower-cased -> the perf YAML holding its fit."""
    folder = Path(perf_dir) if perf_dir is not None else PERF_DIR
    fits: dict[tuple[str, str, int], Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        spec = _read_perf(path)
        if spec.model is None or spec.hardware is None or spec.tp is None:
            continue
        key = (spec.model.lower(), spec.hardware.lower(), spec.tp)
        if key in fits:
            raise ConfigError(f"{path}: a second fit for {spec.model} on {spec.tp} x {spec.hardware} "
                            f"(the first is {fits[key]}); keep one")
        fits[key] = path
    return fits


def _check_weights(model: ModelSpec, hardware: HardwareSpec, tp: int, memory_utilization: float) -> float:
    usable = hardware.memory_bytes * tp * memory_utilization
    if model.weight_bytes >= usable:
        raise DoesNotFit(f"{model.name} weights ({model.weight_bytes / 2**30:.1f} GiB) do not fit on {tp} x "
                         f"{hardware.name} at memory utilization {memory_utilization:g} "
                         f"({usable / 2**30:.1f} GiB usable); use more GPUs (tp) or larger ones")
    return usable - model.weight_bytes


def iteration_model(model: ModelSpec, hardware: HardwareSpec, tp: int, *, perf_dir: str | os.PathLike | None = None,
                    assumptions: Roofline = ROOFLINE) -> IterationModel:
    """The published (or calibrated) fit for (model, hardware, tp) if `perf_dir` has one, else the roofline."""
    _check_tp(tp)
    _check_weights(model, hardware, tp, 1.0)
    path = published_fits(perf_dir).get((model.name.lower(), hardware.name.lower(), tp))
    if path is not None:
        return load_iteration_model(path)
    return roofline_model(model, hardware, tp, assumptions)


def kv_capacity_tokens(model: ModelSpec, hardware: HardwareSpec, tp: int, memory_utilization: float = 0.9) -> int:
    """Tokens of KV cache over all tp GPUs: memory left after the weights, over KV bytes per token."""
    _check_tp(tp)
    if not 0 < memory_utilization <= 1:
        raise ValueError(f"memory_utilization: expected a fraction in (0, 1], got {memory_utilization!r}")
    free = _check_weights(model, hardware, tp, memory_utilization)
    return int(free // (model.kv_bytes_per_token * kv_replication(model, tp)))
