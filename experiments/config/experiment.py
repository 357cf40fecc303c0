"""Experiment configs: YAML files validated at load, `--set key=value` overrides,
and errors that name the file, the key and what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cluster.hardware.noise import NoiseSection
from cluster.hardware.yamlfile import ConfigError, Strict, parse_yaml, read_mapping, validate
from experiments.workloads.workload import WorkloadConfig
from router.registry import make_policy
from router.slo import check_slo


class InstanceGroup(Strict):
    role: Literal["prefill", "decode", "colocated"]
    count: int = Field(1, ge=1)
    tp: Literal[1, 2, 4, 8] = 1
    node: int | None = Field(None, ge=0)


class SchedulerSection(Strict):
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    block_size: int = Field(16, ge=1)
    watermark: float = Field(0.01, ge=0, lt=1)
    chunked_prefill: bool = False
    preemption: Literal["recompute", "swap"] = "recompute"


class ClusterSection(Strict):
    model: str = "Llama-3.1-8B"
    hardware: str = "A100-80GB"
    perf: str | None = None
    noise: NoiseSection | None = None
    noise_seed: int | None = Field(None, ge=0)
    gpus_per_node: int = Field(8, ge=1)
    memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_blocks: int | None = Field(None, ge=1)
    host_memory_utilization: float = Field(0.5, ge=0, le=1)
    host_kv_blocks: int | None = Field(None, ge=0)
    instances: list[InstanceGroup] = Field(default_factory=lambda: [InstanceGroup(role="colocated")], min_length=1)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)

    @field_validator("noise", mode="before")
    @classmethod
    def _noise_off(cls, value):
        """`noise: off` (YAML's false) is no noise; nothing given is the fit's own."""
        if value is False:
            return {}
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"expected off, a section {{decode: [{{quantiles: {{0: 0.9, 1: 1.2}}}}]}} or nothing "
                             f"(the fit's own), got {value!r}")
        return value

    @model_validator(mode="after")
    def _can_serve(self) -> ClusterSection:
        roles = {group.role for group in self.instances}
        for role in ("prefill", "decode"):
            if not roles & {role, "colocated"}:
                raise ValueError(f"instances: no instance can {role} (roles given: {sorted(roles)}); add a "
                                 f"{role} or colocated group, e.g. {{role: {role}, count: 1}}")
        return self


def check_policy(name: str, params: dict) -> None:
    """That policy `name` takes `params`; errors name the key under the router section."""
    try:
        make_policy(name, params)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("router.")) from None


class RouterSection(Strict):
    policy: str = "round_robin"
    params: dict[str, Any] = Field(default_factory=dict)
    tick_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _policy(self) -> RouterSection:
        check_policy(self.policy, self.params)
        return self


class MigrationSection(Strict):
    stage_overhead_s: float = Field(0.0005, ge=0)
    max_stages: int = Field(4, ge=1)
    final_stage_tokens: int = Field(16, ge=1)


class RaySection(Strict):
    address: str | None = None
    engine: Literal["emulated", "hf", "vllm"] = "emulated"
    model_path: str | None = None
    speedup: float = Field(1.0, gt=0)
    kv_scale: float = Field(0.01, gt=0, le=1)
    worker_cpus: float = Field(0.25, gt=0)
    worker_gpus: float = Field(0.0, ge=0)
    start_timeout_s: float = Field(30.0, gt=0)
    transfer_timeout_s: float = Field(30.0, gt=0)
    stamp: Literal["step", "receipt"] = "step"
    transport: Literal["object_store", "shm", "gloo", "nccl"] = "object_store"
    shm_inbox_mib: int = Field(128, ge=1)
    report_batch_s: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _real_engine(self) -> RaySection:
        if self.engine == "emulated":
            return self
        if not self.model_path:
            raise ValueError(f"ray.model_path: the {self.engine!r} engine needs a model folder "
                             f"(make a small one with `pdlab model make FOLDER`)")
        if not (Path(self.model_path) / "config.json").is_file():
            raise ValueError(f"ray.model_path: expected a model folder with a config.json, got {self.model_path!r} "
                             f"(make one with `pdlab model make {self.model_path}`)")
        if self.speedup != 1:
            raise ValueError(f"ray.speedup: a real engine runs at the speed it runs; expected 1, got {self.speedup}")
        return self


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = 0
    runtime: Literal["sim", "ray"] = "sim"
    horizon_s: float | None = Field(None, gt=0)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    router: RouterSection = Field(default_factory=RouterSection)
    migration: MigrationSection = Field(default_factory=MigrationSection)
    ray: RaySection = Field(default_factory=RaySection)
    workload: WorkloadConfig
    slo: dict[str, float | str] = Field(default_factory=dict)
    variants: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("slo")
    @classmethod
    def _slo(cls, value: dict) -> dict:
        return check_slo(value)


def apply_overrides(data: dict, overrides: list[str], where: str) -> dict:
    """`a.b.c=value` sets a nested key; the value is read as YAML (numbers, lists, booleans)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. router.policy=round_robin")
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section of {where}")
            node = node.setdefault(part, {})
        last = parts[-1]
        value = parse_yaml(text, f"--set {item!r}")
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {key}: {last!r} is not a key of {where}")
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    return validate(apply_overrides(read_mapping(path), list(overrides), str(path)), ExperimentConfig, str(path))


def load_variants(path: str | Path, overrides: list[str] = ()) -> dict[str, ExperimentConfig]:
    """The config's `variants` (named lists of key=value overrides applied to the base,
    then `overrides`), or the config alone when it has none."""
    base = load_config(path, overrides)
    if not base.variants:
        return {base.name: base}
    configs = {}
    for name, changes in base.variants.items():
        data = apply_overrides(read_mapping(Path(path)), [*changes, *overrides], f"{path} variant {name}")
        data.pop("variants")
        data["name"] = f"{base.name}-{name}"
        configs[name] = validate(data, ExperimentConfig, f"{path} variant {name}")
    return configs
