"""`pdlab harm RUN`: which migrations, preemptions and rejections hurt users, printed, and
saved beside the run: harm.csv (a row per move), harm.json (the report),
harm-features.csv and harm.png (what goes with harm)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _share(block: dict) -> str:
    if not block["judged"]:
        return "-"
    shares = "/".join(f"{100 * block[v]['share']:.0f}" for v in ("harmful", "neutral", "helpful"))
    return f"{shares}% of {block['judged']}"


def _print(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="moves: harmful/neutral/helpful by attribution and by forked counterfactual")
    for column in ("move", "n", "attributed", "harmful CI", "forked", "same sign", "harm/1k", "visible", "stall s"):
        table.add_column(column, justify="left" if column == "move" else "right", no_wrap=column == "move")
    for move, row in report.items():
        low, high = row["attributed"]["harmful"]["ci95"]
        agree = row["agreement"]
        harm = row["harmful_per_1000_requests"]["value"]
        table.add_row(move, str(row["count"]), _share(row["attributed"]),
                      "-" if low is None else f"{low:.0%}-{high:.0%}", _share(row["forked"]),
                      "-" if not agree["compared"] else f"{agree['same_sign']}/{agree['compared']}",
                      "-" if harm is None else f"{harm:.1f}", str(row["with_visible_idle"]),
                      "-" if row["mean_stall_s"] is None else f"{row['mean_stall_s']:.4f}")
    console.print(table)


def _handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from experiments.runs.imports import read_any
    from experiments.scoring.harm import HarmOptions, analyse
    from experiments.scoring.harmreport import features, plot, summary
    from experiments.scoring.metrics import run_slos

    run = read_any(args.run)
    console = Console(width=max(Console().width, 140))
    options = HarmOptions(forks=args.forks, seed=args.seed, horizon=args.horizon, cap_s=args.cap_s, jobs=args.jobs)
    table = analyse(run, *run_slos(run.meta), options, console)
    report = summary(table, len(run.requests))
    out = Path(args.out or (args.run if Path(args.run).is_dir() else Path(args.run).parent))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "harm.csv", index=False)
    features(table).to_csv(out / "harm-features.csv", index=False)
    (out / "harm.json").write_text(json.dumps({"options": vars(options), "moves": report}, indent=2) + "\n")
    if not len(table):
        console.print("no migration, preemption or rejection in this run")
    else:
        _print(report, console)
        plot(table, out / "harm.png")
    console.print(f"wrote {out / 'harm.csv'}, harm.json, harm-features.csv and harm.png")
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text}")
    return value


def add_parser(commands) -> None:
    from experiments.scoring.counterfactual import HORIZONS

    harm = commands.add_parser("harm", help="which migrations, preemptions and rejections hurt users")
    harm.add_argument("run", help="a run folder")
    harm.add_argument("--forks", "--replays", type=_count, default=20, dest="forks",
                      help="decisions to fork and veto (simulated runs), sampled among the router's")
    harm.add_argument("--horizon", choices=HORIZONS, default="move",
                      help="a fork runs until the move is over (move: its stall ended in the run), the decided-on "
                           "request ended (request) or every request present at the decision did (present)")
    harm.add_argument("--cap-s", type=_positive, default=60.0, help="a fork's horizon at most this long")
    harm.add_argument("--jobs", type=_count, default=1, help="processes for the forks")
    harm.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    harm.add_argument("--out", help="folder for the report (default: the run folder)")
    harm.set_defaults(handler=_handle)
