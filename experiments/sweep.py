"""Sweeps: one base experiment run over the cross product of clusters, router
policies, arrival rates and seeds (docs/sweeps.md). `pdlab sweep SWEEP.yaml` runs
every point on the simulator and writes one tidy results table (one row per point),
the plots and report.md."""
from __future__ import annotations

import argparse
import copy
import itertools
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.config import ConfigError, ExperimentConfig, Strict, apply_overrides, explain, read_mapping
from experiments.harm import harm_counts
from experiments.metrics import Window, run_slos, score
from experiments.runformat import Run, write_run
from experiments.runner import run_config
from router.slo import SCHEMES

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SINGLE_TENANT_RATE = "workload.arrival.rate"
MULTI_TENANT_RATE = "workload.rate_scale"
EVENT_COUNTS = {"migrations_started": "migrate_start", "migrations_completed": "migrate_end",
                "migrations_aborted": "migrate_abort", "preemptions": "preempt"}
DISTRIBUTIONS = {"ttft_p50_s": ("ttft_s", "p50"), "ttft_p99_s": ("ttft_s", "p99"), "tbt_p99_s": ("tbt_s", "p99"),
                 "tpot_p99_s": ("tpot_s", "p99"), "idle_latency_mean_s": ("idle_latency_s", "mean"),
                 "idle_latency_p99_s": ("idle_latency_s", "p99")}


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
        import router.policies  # noqa: F401  (registers the built-in policies)
        from router.policy import POLICIES

        if name not in POLICIES:
            raise ValueError(f"unknown policy; expected one of {sorted(POLICIES)}")
        return name

    @field_validator("label")
    @classmethod
    def _label(cls, label: str | None) -> str | None:
        return None if label is None else _check_label(label)

    @model_validator(mode="after")
    def _params(self) -> PolicyChoice:
        from router.policy import make_policy

        try:
            make_policy(self.name, self.params)
        except ValueError as exc:
            raise ValueError(f"params: {str(exc).removeprefix('router.params: ')}") from None
        return self

    @property
    def key(self) -> str:
        return self.label or self.name


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

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None:
            _unique([str(s) for s in seeds], "seed")
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

    @property
    def folder(self) -> Path:
        return Path(self.cluster) / self.policy / f"rate={self.rate:g}" / f"seed={self.seed}"


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


def _error(exc: ValidationError, where: str, section: str = "") -> ConfigError:
    lines = explain(exc, where).replace(": Value error, ", ": ").splitlines()
    return ConfigError("\n".join(line.replace(f"{where}: ", f"{where}: {section}", 1) for line in lines))


def _validate(data: dict, where: str, section: str = "") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise _error(exc, where, section) from None


def _base_data(path: Path, spec: SweepFile, overrides: list[str]) -> tuple[dict, ExperimentConfig]:
    section = "base." if spec.base is not None else ""
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
        raise ConfigError(f"{where}: {section}variants: a sweep's base takes no variants; use sweep.clusters instead")
    return data, _validate(data, where, section)


def _rate_key(data: dict, spec: SweepFile) -> str:
    if spec.sweep.rate_key:
        return spec.sweep.rate_key
    return MULTI_TENANT_RATE if "tenants" in (data.get("workload") or {}) else SINGLE_TENANT_RATE


def _point(path: Path, base: dict, rate_key: str, choice: tuple) -> Point:
    (cluster, changes), policy, rate, seed = choice
    where = f"{path}, point {cluster}/{policy.key}/rate={rate:g}/seed={seed}"
    data = apply_overrides(copy.deepcopy(base), list(changes), where)
    data["router"] = {**(data.get("router") or {}), "policy": policy.name, "params": dict(policy.params)}
    data = apply_overrides(data, [f"{rate_key}={rate!r}"], where)
    data["seed"] = seed
    data["name"] = f"{data.get('name', 'experiment')}-{cluster}-{policy.key}-rate{rate:g}-seed{seed}"
    return Point(cluster, policy.key, float(rate), seed, _validate(data, where))


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
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise _error(exc, str(path)) from None
    data, base = _base_data(path, spec, base_overrides)
    rate_key = _rate_key(data, spec)
    seeds = spec.sweep.seeds or [base.seed]
    choices = itertools.product(spec.sweep.clusters.items(), spec.sweep.policies, spec.sweep.rates, seeds)
    points = [_point(path, data, rate_key, choice) for choice in choices]
    return Sweep(path, spec.name or path.stem, spec, base, rate_key, points)


def _count(column: pd.Series, value: str) -> int:
    return int((column == value).sum())


def headline(run: Run, summary: dict) -> dict:
    """The summary's headline numbers and the event counts of one run, flat."""
    row = {key: summary[key] for key in ("requests", "finished", "output_tokens", "serving_time_s",
                                         "throughput_tokens_per_s", "request_throughput_per_s", "smooth_goodput")}
    for scheme in SCHEMES:
        values = summary["schemes"][scheme]
        row[f"{scheme}_attainment"] = values["slo_attainment"]
        row[f"{scheme}_token_goodput"] = values["token_goodput"]
        row[f"{scheme}_request_goodput"] = values["request_goodput"]
    for column, (metric, stat) in DISTRIBUTIONS.items():
        row[column] = summary[metric][stat]
    for status in ("rejected", "unfinished"):
        row[status] = _count(run.requests["status"], status)
    for column, kind in EVENT_COUNTS.items():
        row[column] = _count(run.events["kind"], kind)
    return row


def run_point(point: Point, window: Window, folder: Path | None, stalled: int, replays: int = 0,
              progress=None) -> tuple[dict, list]:
    """Run and score one point (simulated or live, as its config says); write its run
    folder when `folder` is given; count its harmful moves (`replays` counterfactuals,
    simulated). Returns its table row and the ids of its `stalled` requests of largest
    idle latency."""
    run = run_config(point.config, progress)
    if folder is not None:
        write_run(run, folder)
    slo, tenants = run_slos(run.meta)
    table, summary = score(run, slo, window, tenants)
    worst = table.sort_values(["idle_latency_s", "request_id"], ascending=[False, True], kind="stable")
    row = {"cluster": point.cluster, "policy": point.policy, "rate": point.rate, "seed": point.seed,
           **headline(run, summary), **harm_counts(run, slo, tenants, replays)}
    return row, worst["request_id"].head(stalled).tolist()


def _job(args: tuple, progress=None) -> tuple[int, dict, list]:
    index, point, window, folder, stalled, replays = args
    try:
        return (index, *run_point(point, window, folder, stalled, replays, progress))
    except ValueError as exc:
        raise ValueError(f"point {point.folder.as_posix()}: {exc}") from None


def timeline_points(sweep: Sweep) -> list[Point]:
    """Per cluster, every policy at the highest rate and the first seed."""
    top, first = max(sweep.spec.sweep.rates), sweep.seeds[0]
    return [p for p in sweep.points if p.rate == top and p.seed == first]


def _jobs(sweep: Sweep, out: Path, keep_runs: bool) -> list[tuple]:
    window = Window(sweep.spec.window.warmup_s, sweep.spec.window.cooldown_s)
    kept = {id(p) for p in (sweep.points if keep_runs else timeline_points(sweep))}
    return [(index, point, window, out / "runs" / point.folder if id(point) in kept else None,
             sweep.spec.timeline_requests, sweep.spec.harm_replays) for index, point in enumerate(sweep.points)]


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


def run_points(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True, console: Console | None = None,
               quiet: bool = False) -> tuple[pd.DataFrame, dict[int, list]]:
    """Every point, in `jobs` processes; rows in point order whatever `jobs` is.
    Returns the results table and, per point index, its most stalled request ids."""
    rows, stalled = {}, {}
    work = _jobs(sweep, out, keep_runs)
    if jobs > 1 and any(p.config.runtime == "ray" for p in sweep.points):
        raise ConfigError(f"sweep {sweep.name}: live points (runtime: ray) share one Ray cluster; run them with --jobs 1")
    with _progress(console or Console(stderr=True), quiet) as progress:
        task = progress.add_task(f"sweep {sweep.name}", total=len(work))
        if jobs == 1:
            for job in work:
                requests = progress.add_task(f"  {job[1].folder.as_posix()}", total=None)
                index, row, ids = _job(job, lambda done, total: progress.update(requests, completed=done, total=total))
                progress.remove_task(requests)
                rows[index], stalled[index] = row, ids
                progress.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
                for future in as_completed([pool.submit(_job, job) for job in work]):
                    index, row, ids = future.result()
                    rows[index], stalled[index] = row, ids
                    progress.advance(task)
    table = pd.DataFrame([rows[i] for i in range(len(work))])
    numeric = [c for c in table.columns if c not in ("cluster", "policy")]
    table[numeric] = table[numeric].apply(pd.to_numeric)
    return table, stalled


def write_table(table: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "results.parquet", index=False)
    table.to_csv(out / "results.csv", index=False)
    return [out / "results.parquet", out / "results.csv"]


def run_sweep(sweep: Sweep, out: Path, jobs: int = 1, keep_runs: bool = True,
              console: Console | None = None, quiet: bool = False) -> pd.DataFrame:
    """Run the points, then write results.parquet/.csv, plots/ and report.md under `out`."""
    from experiments.report import write_outputs

    table, stalled = run_points(sweep, out, jobs, keep_runs, console, quiet)
    write_table(table, out)
    write_outputs(sweep, table, stalled, out)
    if not keep_runs:
        shutil.rmtree(out / "runs", ignore_errors=True)
    return table


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes >= 1, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        sweep = load_sweep(args.sweep, args.set)
        out = Path(args.out or Path("runs") / "sweeps" / sweep.name)
        console.print(f"[bold]pdlab sweep[/bold] {sweep.name}: {len(sweep.points)} points, results in {out}")
        table = run_sweep(sweep, out, args.jobs, not args.no_runs, console)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"pdlab sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'results.parquet'}, {out / 'results.csv'} ({len(table)} rows), {out / 'plots'}, "
          f"{out / 'report.md'}")
    return 0


def add_parser(commands) -> argparse.ArgumentParser:
    """Register `sweep` on the `pdlab` subparsers; its handler returns an exit code."""
    sweep_cmd = commands.add_parser("sweep", help="run a sweep (clusters x policies x rates x seeds): "
                                                  "results table, plots and report.md")
    sweep_cmd.add_argument("sweep", help="sweep YAML (see configs/sweeps/ and docs/sweeps.md)")
    sweep_cmd.add_argument("--out", help="output folder (default runs/sweeps/NAME)")
    sweep_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a key of the base config (e.g. workload.requests=100) or, "
                                "starting with sweep., of the sweep file (e.g. sweep.rates=[2,4]); repeatable")
    sweep_cmd.add_argument("--jobs", type=_positive, default=1, help="points simulated in parallel (default 1)")
    sweep_cmd.add_argument("--no-runs", action="store_true", help="keep no run folders, only the table, plots and report")
    sweep_cmd.set_defaults(handler=_run)
    return sweep_cmd
