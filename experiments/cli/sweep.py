"""`pdlab sweep SWEEP.yaml`: run every point on its runtime, write one tidy results
table (one row per point), the plots and report.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes >= 1, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cluster.hardware.yamlfile import ConfigError

    console = Console(stderr=True)
    try:
        from experiments.sweeps.spec import load_sweep
        from experiments.sweeps.sweep import run_sweep

        sweep = load_sweep(args.sweep, args.set)
        out = Path(args.out or Path("runs") / "sweeps" / sweep.name)
        console.print(f"[bold]pdlab sweep[/bold] {sweep.name}: {len(sweep.points)} points, results in {out}")
        table = run_sweep(sweep, out, args.jobs, not args.no_runs, console, address=args.address)
    except (ConfigError, ValueError, OSError) as exc:
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
    sweep_cmd.add_argument("--address", metavar="HEAD:PORT",
                           help="run the simulated points as Ray tasks across the Ray cluster whose head is "
                                "HEAD:PORT ('auto': the one this machine is part of); every node needs pdlab installed")
    sweep_cmd.add_argument("--no-runs", action="store_true", help="keep no run folders, only the table, plots and report")
    sweep_cmd.set_defaults(handler=_run)
    return sweep_cmd
