"""`pdlab harm RUN`: which migrations and preemptions hurt users, printed, and saved
as harm.csv and harm.json beside the run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _print(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="migrations and preemptions")
    for column in ("move", "n", "replayed", "harmful", "neutral", "helpful", "visible", "idle s", "stall s"):
        table.add_column(column, justify="left" if column == "move" else "right")
    for move, row in report.items():
        table.add_row(move, str(row["count"]), str(row["replayed"]), str(row["harmful"]), str(row["neutral"]),
                      str(row["helpful"]), str(row["with_visible_idle"]), f"{row['visible_idle_s']:.3f}",
                      "-" if row["mean_stall_s"] is None else f"{row['mean_stall_s']:.4f}")
    console.print(table)


def _handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from experiments.runs.imports import read_any
    from experiments.scoring.harm import analyse, summary
    from experiments.scoring.metrics import run_slos

    run = read_any(args.run)
    console = Console()
    table = analyse(run, *run_slos(run.meta), args.replays, args.seed, console)
    report = summary(table)
    out = Path(args.out or (args.run if Path(args.run).is_dir() else Path(args.run).parent))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "harm.csv", index=False)
    (out / "harm.json").write_text(json.dumps(report, indent=2) + "\n")
    if not len(table):
        console.print("no migration or preemption in this run")
    else:
        _print(report, console)
    console.print(f"wrote {out / 'harm.csv'} and {out / 'harm.json'}")
    return 0


def add_parser(commands) -> None:
    harm = commands.add_parser("harm", help="which migrations and preemptions hurt users")
    harm.add_argument("run", help="a run folder")
    harm.add_argument("--replays", type=int, default=20,
                      help="counterfactual replays (simulated runs), sampled among the router's decisions")
    harm.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    harm.add_argument("--out", help="folder for harm.csv and harm.json (default: the run folder)")
    harm.set_defaults(handler=_handle)
