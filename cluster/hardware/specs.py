"""Models and hardware as data: `configs/models/*.yaml` and `configs/hardware/*.yaml`,
validated at the edge into frozen `ModelSpec` and `HardwareSpec`.

A name looks up `configs/<kind>/<name>.yaml` (case-insensitive); a path to a YAML
file is read as is. Bad files get an error naming the file, the key and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from cluster.hardware.yamlfile import ConfigError, Strict, read_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
LINK_KINDS = ("nvlink", "pcie", "network")
HARDWARE_FIGURES = ("memory_gib", "hbm_bandwidth", "bf16_flops", "host_memory_gib")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    params: int
    dtype: str
    source: str

    @property
    def bytes_per_element(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_element

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_element


@dataclass(frozen=True)
class LinkSpec:
    bandwidth: float
    latency: float
    source: str

    def transfer_time(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    memory_gib: float
    hbm_bandwidth: float
    bf16_flops: float
    links: dict[str, LinkSpec]
    sources: dict[str, str] = field(default_factory=dict)
    description: str = ""
    host_memory_gib: float = 0.0
    """Host memory (DRAM) beside each GPU, where KV can be parked (swapped out)."""

    def __hash__(self) -> int:
        return hash((self.name, self.memory_gib, self.hbm_bandwidth, self.bf16_flops))

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    def link(self, kind: str) -> LinkSpec:
        if kind not in self.links:
            raise ConfigError(f"hardware {self.name}: no link {kind!r}; it has {sorted(self.links)}")
        return self.links[kind]


class ModelFile(Strict):
    name: str = Field(min_length=1)
    layers: PositiveInt
    hidden_size: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    params: PositiveInt
    dtype: Literal["bf16", "fp16", "fp32"]
    source: str = Field(min_length=1)

    @field_validator("kv_heads")
    @classmethod
    def _divides_heads(cls, kv_heads: int, info: ValidationInfo) -> int:
        heads = info.data.get("heads")
        if heads and heads % kv_heads:
            raise ValueError(f"expected a divisor of heads ({heads}), got {kv_heads}")
        return kv_heads


class LinkFile(Strict):
    bandwidth: PositiveFloat
    latency: float = Field(ge=0)
    source: str = Field(min_length=1)


class HardwareFile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    memory_gib: PositiveFloat
    hbm_bandwidth: PositiveFloat
    bf16_flops: PositiveFloat
    host_memory_gib: PositiveFloat
    links: dict[Literal["nvlink", "pcie", "network"], LinkFile]
    sources: dict[str, str]

    @field_validator("links")
    @classmethod
    def _all_links(cls, links: dict) -> dict:
        missing = [kind for kind in LINK_KINDS if kind not in links]
        if missing:
            raise ValueError(f"expected links {list(LINK_KINDS)}, missing {missing}")
        return links

    @model_validator(mode="after")
    def _every_figure_sourced(self) -> HardwareFile:
        missing = [key for key in HARDWARE_FIGURES if not self.sources.get(key)]
        if missing:
            raise ValueError(f"sources: expected a source for every figure, missing {missing}")
        return self


def _names(kind: str) -> list[str]:
    return sorted((path.stem for path in (CONFIGS / kind).glob("*.yaml")), key=str.lower)


def _resolve(kind: str, name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.is_file():
        return path
    for known in _names(kind):
        if known.lower() == text.lower():
            return CONFIGS / kind / f"{known}.yaml"
    singular = kind.rstrip("s")
    raise ConfigError(f"unknown {singular} {text!r}; available: {', '.join(_names(kind))} (or a path to a YAML file)")


def available_models() -> list[str]:
    return _names("models")


def available_hardware() -> list[str]:
    return _names("hardware")


def load_model(name_or_path: str | os.PathLike) -> ModelSpec:
    spec = read_yaml(_resolve("models", name_or_path), ModelFile)
    return ModelSpec(**spec.model_dump())


def load_hardware(name_or_path: str | os.PathLike) -> HardwareSpec:
    spec = read_yaml(_resolve("hardware", name_or_path), HardwareFile)
    links = {kind: LinkSpec(**link.model_dump()) for kind, link in spec.links.items()}
    return HardwareSpec(name=spec.name, memory_gib=spec.memory_gib, hbm_bandwidth=spec.hbm_bandwidth,
                        bf16_flops=spec.bf16_flops, links=links, sources=dict(spec.sources),
                        description=spec.description, host_memory_gib=spec.host_memory_gib)
