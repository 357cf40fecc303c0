"""Workloads: the `workload:` section of an experiment (one or more tenants, each
an arrival process and a length distribution with its own SLO overrides), and the
request table it generates (docs/workloads.md).
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from cluster.hardware.yamlfile import Strict, validate
from experiments.workloads.arrivals import Arrival, TraceArrival
from experiments.workloads.lengths import Lengths, SameTraceLengths
from router.slo import check_slo

DEFAULT_TENANT = "default"
COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "tenant")
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def check_pair(arrival: Any, lengths: Any) -> None:
    if isinstance(lengths, SameTraceLengths) and not isinstance(arrival, TraceArrival):
        raise ValueError("lengths: dist 'same_trace' takes the lengths of the replayed trace rows, "
                         f"so it needs arrival process 'trace', got {arrival.process!r}")


class TenantConfig(Strict):
    """One stream of requests. Its share of the load follows from its arrival rate;
    `from_s` and `until_s` make it join late or leave early."""
    name: str = Field(min_length=1)
    arrival: Arrival
    lengths: Lengths
    slo: dict[str, Any] = Field(default_factory=dict)
    from_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    until_s: Seconds | None = None

    @field_validator("slo")
    @classmethod
    def _slo(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        return check_slo(overrides)

    @model_validator(mode="after")
    def _consistent(self) -> TenantConfig:
        check_pair(self.arrival, self.lengths)
        if self.until_s is not None and self.until_s <= self.from_s:
            raise ValueError(f"until_s: expected a time after from_s ({self.from_s}), got {self.until_s}")
        return self


class WorkloadConfig(Strict):
    """`requests` caps the total, `duration_s` ends arrivals; at least one. Either
    `tenants`, or for one tenant (named "default") `arrival`, `lengths` and `slo`
    directly; after validation `tenants` always holds the list."""
    requests: PositiveInt | None = None
    duration_s: Seconds | None = None
    rate_scale: Seconds = 1.0
    tenants: list[TenantConfig] | None = Field(None, min_length=1)
    arrival: Arrival | None = None
    lengths: Lengths | None = None
    slo: dict[str, Any] | None = None

    @field_validator("slo")
    @classmethod
    def _slo(cls, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if overrides is None else check_slo(overrides)

    @model_validator(mode="after")
    def _one_form(self) -> WorkloadConfig:
        if self.requests is None and self.duration_s is None:
            raise ValueError("requests: give requests (a count), duration_s (seconds) or both")
        if self.tenants is None:
            self._single_tenant()
        elif self.arrival is not None or self.lengths is not None or self.slo is not None:
            single = [key for key in ("arrival", "lengths", "slo") if getattr(self, key) is not None]
            raise ValueError(f"{single[0]}: give tenants, or {'/'.join(single)} for a single tenant, not both")
        names = [tenant.name for tenant in self.tenants]
        for index, tenant in enumerate(self.tenants):
            if names.index(tenant.name) != index:
                raise ValueError(f"tenants.{index}.name: duplicate tenant name {tenant.name!r}")
            if self.duration_s is not None and tenant.from_s >= self.duration_s:
                raise ValueError(f"tenants.{index}.from_s: expected a time before duration_s "
                                 f"({self.duration_s}), got {tenant.from_s}")
        return self

    def _single_tenant(self) -> None:
        missing = [key for key in ("arrival", "lengths") if getattr(self, key) is None]
        if missing:
            raise ValueError(f"{missing[0]}: missing (give tenants, or arrival and lengths for one tenant)")
        check_pair(self.arrival, self.lengths)
        self.tenants = [TenantConfig.model_construct(name=DEFAULT_TENANT, arrival=self.arrival,
                                                     lengths=self.lengths, slo=dict(self.slo or {}),
                                                     from_s=0.0, until_s=None)]
        self.arrival = self.lengths = self.slo = None


def tenant_slos(config: WorkloadConfig) -> dict[str, dict]:
    return {tenant.name: dict(tenant.slo) for tenant in config.tenants}


def _tenant_times(tenant: TenantConfig, config: WorkloadConfig, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    ends = [end for end in (config.duration_s, tenant.until_s) if end is not None]
    horizon = (min(ends) - tenant.from_s) * config.rate_scale if ends else None
    times, rows = tenant.arrival.times(rng, config.requests, horizon)
    return tenant.from_s + times / config.rate_scale, rows


def _tenant_lengths(tenant: TenantConfig, count: int, rows: np.ndarray | None, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(tenant.lengths, SameTraceLengths):
        prompt, output = tenant.lengths.take(tenant.arrival.file, rows[:count])
    else:
        prompt, output = tenant.lengths.draw(count, rng)
    return tenant.lengths.clip(prompt, output)


def generate(config: WorkloadConfig, seed: int) -> pd.DataFrame:
    """The requests in arrival order. Each tenant draws from its own generators
    (arrivals and lengths apart), so adding a tenant at the end of the list or
    changing one tenant's rate leaves the other tenants' requests unchanged."""
    streams = [sequence.spawn(2) for sequence in np.random.SeedSequence(seed).spawn(len(config.tenants))]
    drawn = [_tenant_times(tenant, config, np.random.default_rng(arrival))
             for tenant, (arrival, _) in zip(config.tenants, streams)]
    times = np.concatenate([t for t, _ in drawn]) if drawn else np.zeros(0)
    owner = np.repeat(np.arange(len(drawn)), [len(t) for t, _ in drawn])
    order = np.argsort(times, kind="stable")[: config.requests]
    counts = np.bincount(owner[order], minlength=len(drawn))
    prompts, outputs = [], []
    for tenant, (_, rows), (_, lengths), count in zip(config.tenants, drawn, streams, counts):
        prompt, output = _tenant_lengths(tenant, int(count), rows, np.random.default_rng(lengths))
        prompts.append(prompt)
        outputs.append(output)
    kept_owner = owner[order]
    position = np.empty(len(order), np.int64)
    position[np.argsort(kept_owner, kind="stable")] = np.arange(len(order))
    names = np.array([tenant.name for tenant in config.tenants], dtype=object)
    return pd.DataFrame({
        "request_id": np.arange(len(order), dtype=np.int64),
        "arrival_s": times[order].astype(np.float64),
        "prompt_tokens": np.concatenate(prompts)[position].astype(np.int64),
        "output_tokens": np.concatenate(outputs)[position].astype(np.int64),
        "tenant": names[kept_owner],
    })


def load_workload(data: Any, where: str, base_dir: str | None = None, prefix: str = "workload") -> WorkloadConfig:
    """Validate a `workload:` section read from file `where`; relative data-file paths
    are taken from `base_dir` (else the working directory). Bad input raises a
    ValueError with one line per problem: file, dotted key, what was expected."""
    return validate(data, WorkloadConfig, where, prefix, context={"base_dir": base_dir})
