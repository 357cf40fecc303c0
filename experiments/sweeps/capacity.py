"""Capacity search (`pdlab capacity`): per router policy, the highest arrival rate at
which the SLO attainment, averaged over seeds, still meets a target (the capacity
DistServe and Metron report). From a start rate the search doubles or halves until
the target is bracketed, then bisects until the bracket is within a relative
tolerance. Every probe is a point run as a sweep's are (local processes or a Ray
cluster); every probe's row is kept."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import ValidationError
from rich.console import Console

from cluster.hardware.yamlfile import ConfigError, read_mapping, validate
from experiments.config.experiment import ExperimentConfig, apply_overrides
from experiments.scoring.metrics import Window
from experiments.sweeps.ceiling import Ceiling, ceiling
from experiments.sweeps.points import as_table, run_jobs
from experiments.sweeps.spec import MULTI_TENANT_RATE, SINGLE_TENANT_RATE, PolicyChoice, make_point
from router.slo import SCHEMES

MIN_RATE, MAX_RATE = 1e-3, 1e5
MAX_PROBES = 16


@dataclass(frozen=True)
class Target:
    """An attainment to meet; `steady`: by the last quarter of arrivals too (where a
    backlog that readers' slack hid for a while shows)."""
    scheme: str
    attainment: float
    steady: bool = False

    @property
    def column(self) -> str:
        return f"{self.scheme}_attainment"

    def per_seed(self, probes: pd.DataFrame) -> pd.Series:
        """Each probe's attainment as judged: with `steady`, the lower of all arrivals' and the last quarter's."""
        overall = probes[self.column]
        return overall.clip(upper=probes[f"{self.column}_last_quarter"]) if self.steady else overall

    def met(self, probes: pd.DataFrame) -> tuple[float, bool]:
        attained = float(self.per_seed(probes).mean())
        return attained, attained >= self.attainment

    def __str__(self) -> str:
        return f"{self.scheme}:{self.attainment:g}" + (", last quarter too" if self.steady else "")


def parse_target(text: str, steady: bool = False) -> Target:
    """`SCHEME:ATTAINMENT`, e.g. `smooth:0.9`."""
    scheme, _, value = text.partition(":")
    if scheme not in SCHEMES:
        raise ConfigError(f"--target: expected SCHEME:ATTAINMENT with SCHEME one of {list(SCHEMES)}, got {text!r}")
    try:
        attainment = float(value)
    except ValueError:
        attainment = math.nan
    if not 0 < attainment <= 1:
        raise ConfigError(f"--target: expected an attainment in (0, 1] after '{scheme}:', got {value!r}")
    return Target(scheme, attainment, steady)


@dataclass
class Bracket:
    """One policy's search so far: the highest rate that met the target, the lowest
    that did not, and how many rates were tried."""
    meets: float | None = None
    fails: float | None = None
    probes: int = 0

    def next_rate(self, start: float, tolerance: float) -> float | None:
        """The rate to try next; None when the search is over."""
        if self.probes >= MAX_PROBES:
            return None
        if self.meets is None and self.fails is None:
            return start
        if self.fails is None:
            return self.meets * 2 if self.meets * 2 <= MAX_RATE else None
        if self.meets is None:
            return self.fails / 2 if self.fails / 2 >= MIN_RATE else None
        if self.fails - self.meets <= tolerance * self.fails:
            return None
        middle = float(f"{(self.meets + self.fails) / 2:.4g}")
        return middle if self.meets < middle < self.fails else None

    def record(self, rate: float, met: bool) -> None:
        self.probes += 1
        if met:
            self.meets = max(rate, self.meets or rate)
        else:
            self.fails = min(rate, self.fails or rate)


@dataclass(frozen=True)
class CapacitySearch:
    path: Path
    name: str
    data: dict
    rate_key: str
    policies: list[PolicyChoice]
    seeds: list[int]
    target: Target
    start: float
    tolerance: float = 0.05

    @property
    def ceiling(self) -> Ceiling:
        return ceiling(validate(self.data, ExperimentConfig, str(self.path)))


def load_search(path: str | Path, target: str, policies: list[str] = (), seeds: list[int] = (),
                start: float | None = None, tolerance: float = 0.05, overrides: list[str] = (),
                steady: bool = False) -> CapacitySearch:
    """The experiment config at `path` (with `overrides`), validated, as the base of a
    search per policy (default: the config's own) over `seeds` (default: its seed)."""
    path = Path(path)
    data = apply_overrides(read_mapping(path), list(overrides), str(path))
    if "variants" in data:
        raise ConfigError(f"{path}: variants: a capacity search takes one config; give --policies instead")
    base = validate(data, ExperimentConfig, str(path))
    if not 0 < tolerance < 1:
        raise ConfigError(f"--tolerance: expected a fraction of the rate in (0, 1), got {tolerance!r}")
    if start is not None and not MIN_RATE <= start <= MAX_RATE:
        raise ConfigError(f"--start: expected a rate in [{MIN_RATE:g}, {MAX_RATE:g}], got {start!r}")
    tenants = "tenants" in (data.get("workload") or {})
    own = PolicyChoice(name=base.router.policy, params=dict(base.router.params))
    try:
        choices = [own if name == own.name else PolicyChoice.from_text(name) for name in policies] or [own]
    except ValidationError as exc:
        raise ConfigError("--policies: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) \
            from None
    except ValueError as exc:
        raise ConfigError(f"--policies: {' '.join(str(exc).split())}") from None
    if len({c.key for c in choices}) < len(choices):
        raise ConfigError(f"--policies: each policy once, got {list(policies)}")
    if start is None:
        start = 1.0 if tenants else getattr(base.workload.tenants[0].arrival, "rate", None)
        if start is None:
            raise ConfigError(f"{path}: workload.arrival has no rate to start from; give --start")
    return CapacitySearch(path, base.name or path.stem, data, MULTI_TENANT_RATE if tenants else SINGLE_TENANT_RATE,
                          choices, list(seeds) or [base.seed], parse_target(target, steady), start, tolerance)


def run_capacity(search: CapacitySearch, out: Path, jobs: int = 1, address: str | None = None,
                 keep_runs: bool = True, console: Console | None = None,
                 quiet: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Search every policy's capacity, the policies' probes of one round run together.
    Returns the probes (one row per point, with its `round`) and the capacities."""
    console = console or Console(stderr=True)
    brackets = {choice.key: Bracket() for choice in search.policies}
    rows, round_ = [], 0
    while asks := {c.key: r for c in search.policies
                   if (r := brackets[c.key].next_rate(search.start, search.tolerance)) is not None}:
        work = []
        for choice in (c for c in search.policies if c.key in asks):
            for seed in search.seeds:
                point = make_point(search.path, search.data, search.rate_key,
                                   (("base", []), choice, asks[choice.key], seed))
                work.append((len(rows) + len(work), point, Window(), out / "runs" / point.folder if keep_runs else None,
                             0, 0))
        done = run_jobs(work, f"capacity {search.name}, round {round_ + 1}", jobs, address, console, quiet)
        probes = as_table([{**done[job[0]][0], "round": round_} for job in work])
        rows += probes.to_dict("records")
        for key, rate in asks.items():
            attainment, met = search.target.met(probes[probes["policy"] == key])
            brackets[key].record(rate, met)
            if not quiet:
                console.print(f"  {key} at {rate:g} req/s: {search.target.scheme} attainment {attainment:.3f} "
                              f"({'meets' if met else 'misses'} {search.target})")
        round_ += 1
    probes = as_table(rows)
    return probes, capacities(search, brackets, probes, search.ceiling)


def capacities(search: CapacitySearch, brackets: dict[str, Bracket], probes: pd.DataFrame,
               limit: Ceiling) -> pd.DataFrame:
    """Per policy: the capacity (the highest rate meeting the target; NaN if none did),
    the lowest rate missing it, the attainment at the capacity over the seeds, whether
    the search bracketed it within the tolerance, and the capacity against the config's
    steady-state ceiling (above 1: held only for the run's length)."""
    rows = []
    for choice in search.policies:
        bracket = brackets[choice.key]
        mine = probes[probes["policy"] == choice.key]
        at = search.target.per_seed(mine[mine["rate"] == bracket.meets])
        closed = bracket.meets is not None and bracket.fails is not None and \
            bracket.fails - bracket.meets <= search.tolerance * bracket.fails
        rows.append({"policy": choice.key, "target": str(search.target),
                     "capacity_rate": math.nan if bracket.meets is None else bracket.meets,
                     "first_missing_rate": math.nan if bracket.fails is None else bracket.fails,
                     "attainment_mean": float(at.mean()) if len(at) else math.nan,
                     "attainment_min": float(at.min()) if len(at) else math.nan,
                     "seeds": len(search.seeds), "rates_tried": bracket.probes, "bracketed": closed,
                     "ceiling_rate": limit.rate, "ceiling_binds": limit.binds})
    table = pd.DataFrame(rows)
    table["x_ceiling"] = table["capacity_rate"] / limit.rate
    return table


def write_capacity(search: CapacitySearch, probes: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[Path]:
    from experiments.sweeps.plots import versus_rate

    out.mkdir(parents=True, exist_ok=True)
    probes.to_parquet(out / "probes.parquet", index=False)
    probes.to_csv(out / "probes.csv", index=False)
    table.to_csv(out / "capacity.csv", index=False)
    label = f"{search.target.scheme} attainment"
    plots = versus_rate(probes.sort_values(["policy", "rate", "seed"], kind="stable"),
                        [(search.target.column, label)], out / "plots" / "capacity", "rate (req/s)",
                        target=search.target.attainment)
    return [out / "probes.parquet", out / "probes.csv", out / "capacity.csv", *plots]

