"""`pdlab capacity CONFIG`: per router policy, the highest arrival rate meeting an SLO
attainment target over seeds; a table, a plot, every probe's row and run."""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli.sweep import _positive


def _print(table, console) -> None:
    from rich.table import Table

    shown = Table(title=f"capacity at {table['target'].iloc[0]} (mean over {table['seeds'].iloc[0]} seeds)")
    shown.add_column("policy", overflow="fold")
    for column in ("req/s", "x ceiling", "misses at", "attained", "worst seed", "rates"):
        shown.add_column(column, justify="right", no_wrap=True)

    def cell(value: float, spec: str) -> str:
        return "-" if value != value else format(value, spec)

    for row in table.itertuples(index=False):
        capacity = cell(row.capacity_rate, "g") + ("" if row.bracketed else " (not bracketed)")
        shown.add_row(row.policy, capacity, cell(row.x_ceiling, ".2f"), cell(row.first_missing_rate, "g"),
                      cell(row.attainment_mean, ".3f"), cell(row.attainment_min, ".3f"), str(row.rates_tried))
    console.print(shown)
    first = table.iloc[0]
    console.print(f"steady-state ceiling {first['ceiling_rate']:.3g} req/s ({first['ceiling_binds']} binds; iteration "
                  "model, whatever the router): a capacity above it holds only for the run's length")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from experiments.sweeps.capacity import load_search, run_capacity, write_capacity
    from experiments.sweeps.sweep import written_whole

    console = Console(stderr=True)
    search = load_search(args.config, args.target, args.policies, args.seeds, args.start, args.tolerance, args.set,
                         args.steady)
    out = Path(args.out or Path("runs") / "capacity" / search.name)
    console.print(f"[bold]pdlab capacity[/bold] {search.name}: {len(search.policies)} policies x "
                  f"{len(search.seeds)} seeds, target {search.target}, from {search.start:g} req/s; results in {out}")
    with written_whole(out) as work:
        probes, table = run_capacity(search, work, args.jobs, args.address, not args.no_runs, console)
        written = [out / path.relative_to(work) for path in write_capacity(search, probes, table, work)]
    _print(table, Console())
    print(f"wrote {', '.join(str(p) for p in written)} ({len(probes)} probes)")
    return 0


def add_parser(commands) -> argparse.ArgumentParser:
    """Register `capacity` on the `pdlab` subparsers; its handler returns an exit code."""
    cmd = commands.add_parser("capacity", help="per policy, the highest rate meeting an SLO attainment target")
    cmd.add_argument("config", help="experiment YAML (its rate is where the search starts)")
    cmd.add_argument("--policies", nargs="+", default=[], metavar="POLICY",
                     help="router policies to search (default: the config's), each NAME or "
                          "NAME:KEY=VALUE,... with its params (e.g. smooth_goodput:park=false)")
    cmd.add_argument("--target", default="smooth:0.9", metavar="SCHEME:ATTAINMENT",
                     help="attainment to meet, averaged over seeds: smooth, ttft_tbt, ttft_tpot or e2e, then a "
                          "fraction (default smooth:0.9)")
    cmd.add_argument("--seeds", nargs="+", type=int, default=[], metavar="SEED",
                     help="seeds each rate is run with (default: the config's seed)")
    cmd.add_argument("--steady", action="store_true",
                     help="the target must hold for the last quarter of arrivals too (a backlog readers' slack hides "
                          "for a while shows there); give runs long enough, e.g. --set workload.requests=8000")
    cmd.add_argument("--start", type=float, help="rate to start from (default: the config's)")
    cmd.add_argument("--tolerance", type=float, default=0.05,
                     help="stop when the capacity is bracketed within this fraction of the rate (default 0.05)")
    cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable)")
    cmd.add_argument("--out", help="output folder (default runs/capacity/NAME)")
    cmd.add_argument("--jobs", type=_positive, default=1, help="points simulated in parallel (default 1)")
    cmd.add_argument("--address", metavar="HEAD:PORT",
                     help="run the points as Ray tasks across the Ray cluster at HEAD:PORT (as pdlab sweep)")
    cmd.add_argument("--no-runs", action="store_true", help="keep no run folders, only the tables and plot")
    cmd.set_defaults(handler=_run)
    return cmd
