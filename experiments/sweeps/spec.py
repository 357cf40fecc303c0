"""A sweep file (docs/sweeps.md): one base experiment over the cross product of
clusters, router policies, arrival rates and seeds, validated, with every point's
config built and validated."""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from cluster.hardware.yamlfile import ConfigError, Strict, parse_yaml, read_mapping, validate
from experiments.config.experiment import ExperimentConfig, apply_overrides, check_policy

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SINGLE_TENANT_RATE = "workload.arrival.rate"
MULTI_TENANT_RATE = "workload.rate_scale"


def _check_label(label: str) -> str:
    if not LABEL.match(label):
        raise ValueError("expected a label of letters, digits, '.', '_' or '-' (it names a folder)")
    return label


class PolicyChoice(Strict):
    """A router policy by registry name, with its params; `label` names it in the
    table, plots and folders (default: the name)."""
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from router.registry import POLICIES

        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; expected one of {sorted(POLICIES)}")
        return name

    @field_validator("label")
    @classmethod
    def _label(cls, label: str | None) -> str | None:
        return None if label is None else _check_label(label)

    @model_validator(mode="after")
    def _params(self) -> PolicyChoice:
        check_policy(self.name, self.params)
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    @classmethod
    def from_text(cls, text: str) -> PolicyChoice:
        """`NAME` or `NAME:KEY=VALUE,KEY=VALUE` (values read as YAML), labelled
        `NAME.KEY-VALUE.KEY-VALUE`; e.g. `smooth_goodput:park=false`."""
        name, _, rest = text.partition(":")
        params = {}
        for item in filter(None, rest.split(",")):
            key, equals, value = item.partition("=")
            if not equals or not key:
                raise ValueError(f"{text!r}: expected NAME or NAME:KEY=VALUE,KEY=VALUE")
            params[key] = parse_yaml(value, f"policy {text!r}")
        label = ".".join([name, *(f"{k}-{v}" for k, v in params.items())]) if params else None
        return cls(name=name, params=params, label=label)


def _unique(labels: list[str], what: str, hint: str = "") -> None:
    seen = set()
    for index, label in enumerate(labels):
        if label in seen:
            raise ValueError(f"entry {index}: duplicate {what} {label!r}{hint}")
        seen.add(label)


class SweepAxes(Strict):
    rates: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)
    policies: list[PolicyChoice] = Field(min_length=1)
    clusters: dict[str, list[str]] = Field(default_factory=lambda: {"base": []}, min_length=1)
    seeds: list[int] | None = Field(None, min_length=1)
    noise_seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    rate_key: str | None = None

    @field_validator("rates")
    @classmethod
    def _rates(cls, rates: list[float]) -> list[float]:
        _unique([f"{r:g}" for r in rates], "rate")
        return rates

    @field_validator("policies")
    @classmethod
    def _policies(cls, policies: list[PolicyChoice]) -> list[PolicyChoice]:
        _unique([p.key for p in policies], "policy label", "; give each entry its own label")
        return policies

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, clusters: dict[str, list[str]]) -> dict[str, list[str]]:
        for label in clusters:
            try:
                _check_label(label)
            except ValueError as exc:
                raise ValueError(f"{label!r}: {exc}") from None
        return clusters

    @field_validator("seeds", "noise_seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None, info) -> list[int] | None:
        if seeds is not None:
            _unique([str(s) for s in seeds], info.field_name.removesuffix("s").replace("_", " "))
        return seeds


class WindowSection(Strict):
    warmup_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    cooldown_s: float = Field(0.0, ge=0, allow_inf_nan=False)


class SweepFile(Strict):
    """`base` (an experiment config inline) or `base_config` (its path, relative to
    the sweep file), `set` (overrides on the base), the `sweep` axes and the scoring `window`."""
    name: str | None = None
    base: dict[str, Any] | None = None
    base_config: str | None = None
    set: list[str] = Field(default_factory=list)
    sweep: SweepAxes
    window: WindowSection = Field(default_factory=WindowSection)
    timeline_requests: int = Field(3, ge=1, le=8)
    harm_replays: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_base(self) -> SweepFile:
        if (self.base is None) == (self.base_config is None):
            raise ValueError("base: give base (an experiment config) or base_config (its path), exactly one")
        return self


@dataclass(frozen=True)
class Point:
    cluster: str
    policy: str
    rate: float
    seed: int
    config: ExperimentConfig
    noise_seed: int | None = None

    @property
    def folder(self) -> Path:
        folder = Path(self.cluster) / self.policy / f"rate={self.rate:g}" / f"seed={self.seed}"
        return folder if self.noise_seed is None else folder / f"noise={self.noise_seed}"


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    spec: SweepFile
    base: ExperimentConfig
    rate_key: str
    points: list[Point]

    @property
    def seeds(self) -> list[int]:
        return self.spec.sweep.seeds or [self.base.seed]


def _base_data(path: Path, spec: SweepFile, overrides: list[str]) -> tuple[dict, ExperimentConfig]:
    section = "base" if spec.base is not None else ""
    if spec.base is not None:
        data, where = copy.deepcopy(spec.base), str(path)
    else:
        base_path = (path.parent / spec.base_config).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base_config: no such config file {str(base_path)!r} "
                              "(a path relative to the sweep file)")
        data, where = read_mapping(base_path), str(base_path)
    data = apply_overrides(data, [*spec.set, *overrides], where)
    if "variants" in data:
        raise ConfigError(f"{where}: {'.'.join([section, 'variants']).lstrip('.')}: a sweep's base takes no variants; "
                          "use sweep.clusters instead")
    return data, validate(data, ExperimentConfig, where, section)


def _rate_key(data: dict, spec: SweepFile) -> str:
    if spec.sweep.rate_key:
        return spec.sweep.rate_key
    return MULTI_TENANT_RATE if "tenants" in (data.get("workload") or {}) else SINGLE_TENANT_RATE


def make_point(path: Path, base: dict, rate_key: str, choice: tuple, noise_seed: int | None = None) -> Point:
    """The point `choice` = ((cluster label, its overrides), policy, rate, seed) of the
    base data, under `noise_seed` (the step-time noise's seed) where given."""
    (cluster, changes), policy, rate, seed = choice
    noise = "" if noise_seed is None else f"/noise={noise_seed}"
    where = f"{path}, point {cluster}/{policy.key}/rate={rate:g}/seed={seed}{noise}"
    data = apply_overrides(copy.deepcopy(base), list(changes), where)
    data["router"] = {**(data.get("router") or {}), "policy": policy.name, "params": dict(policy.params)}
    data = apply_overrides(data, [f"{rate_key}={rate!r}"], where)
    data["seed"] = seed
    if noise_seed is not None:
        data["cluster"] = {**(data.get("cluster") or {}), "noise_seed": noise_seed}
    data["name"] = f"{data.get('name', 'experiment')}-{cluster}-{policy.key}-rate{rate:g}-seed{seed}" + \
        ("" if noise_seed is None else f"-noise{noise_seed}")
    return Point(cluster, policy.key, float(rate), seed, validate(data, ExperimentConfig, where), noise_seed)


def _split(overrides: list[str]) -> tuple[list[str], list[str]]:
    own = [o for o in overrides if o.startswith("sweep.")]
    return own, [o for o in overrides if not o.startswith("sweep.")]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """The sweep file, validated, with every point's config built and validated.
    `overrides` starting with `sweep.` change the sweep file; the others the base config."""
    path = Path(path)
    own, base_overrides = _split(list(overrides))
    raw = apply_overrides(read_mapping(path), own, str(path))
    if ("base" in raw) == ("base_config" in raw):
        raise ConfigError(f"{path}: base: give base (an experiment config) or base_config (its path), exactly one")
    spec = validate(raw, SweepFile, str(path))
    data, base = _base_data(path, spec, base_overrides)
    rate_key = _rate_key(data, spec)
    seeds = spec.sweep.seeds or [base.seed]
    choices = itertools.product(spec.sweep.clusters.items(), spec.sweep.policies, spec.sweep.rates, seeds)
    points = [make_point(path, data, rate_key, choice, noise) for choice in choices
              for noise in spec.sweep.noise_seeds or [None]]
    return Sweep(path, spec.name or path.stem, spec, base, rate_key, points)


def timeline_points(sweep: Sweep) -> list[Point]:
    """Per cluster, every policy at the highest rate and the first seed (and noise seed)."""
    top, first = max(sweep.spec.sweep.rates), sweep.seeds[0]
    noise = (sweep.spec.sweep.noise_seeds or [None])[0]
    return [p for p in sweep.points if p.rate == top and p.seed == first and p.noise_seed == noise]
