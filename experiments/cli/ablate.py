"""`pdlab ablate CONFIG --veto KIND`: the config over seeds as it is and with every router
decision of those kinds vetoed, paired per request, with a bootstrap interval; the
table and ablation.json in --out."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _handle(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from experiments.config.experiment import load_config
    from experiments.scoring.ablation import ablate

    config = load_config(args.config, args.set)
    if config.runtime != "sim":
        raise ValueError("ablate: expected a simulated config (runtime: sim); forks and vetoes need the simulator")
    seeds = args.seeds or [config.seed]
    table, result = ablate(config, frozenset(args.veto), seeds, args.jobs)
    out = Path(args.out or Path("runs") / "ablate" / f"{config.name}-{'+'.join(sorted(args.veto))}")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "ablation.csv", index=False)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = Table(title=f"{config.name}: vetoing every {', '.join(sorted(args.veto))} decision")
    for column in ("seed", "decisions", "vetoed", "benefit/request", "smooth gp", "vetoed", "smooth att.", "vetoed"):
        shown.add_column(column, justify="right")
    for row in table.itertuples(index=False):
        shown.add_row(str(row.seed), str(row.decisions), str(row.vetoed), f"{row.benefit_change_per_request:+.2f}",
                      f"{row.smooth_goodput:.1f}", f"{row.smooth_goodput_vetoed:.1f}", f"{row.smooth_attainment:.1%}",
                      f"{row.smooth_attainment_vetoed:.1%}")
    console = Console(width=max(Console().width, 110))
    console.print(shown)
    low, high = result["ci95"]
    console.print(f"benefit per request, as run minus vetoed: {result['benefit_change_per_request']:+.2f} "
                  f"(95% CI {low:+.2f} to {high:+.2f}): the decisions are {result['verdict']}")
    console.print(f"wrote {out / 'ablation.csv'} and ablation.json")
    return 0


def _veto_kind(text: str) -> str:
    from cluster.core.setup import Veto

    try:
        Veto(kinds=frozenset({text}))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_parser(commands) -> None:
    from cluster.core.setup import VETO_KINDS
    from experiments.cli.sweep import _positive

    cmd = commands.add_parser("ablate", help="veto every router decision of a kind, over seeds, paired")
    cmd.add_argument("config", help="experiment YAML (simulated)")
    cmd.add_argument("--veto", nargs="+", required=True, type=_veto_kind, metavar="KIND",
                     help=f"kinds of decision to veto: {', '.join(VETO_KINDS)}, or rule:NAME (one of the "
                          "policy's rules, docs/routers.md lists them)")
    cmd.add_argument("--seeds", nargs="+", type=int, default=[], metavar="SEED", help="default: the config's seed")
    cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    cmd.add_argument("--jobs", type=_positive, default=1, help="runs in parallel (default 1)")
    cmd.add_argument("--out", help="output folder (default runs/ablate/NAME-KINDS)")
    cmd.set_defaults(handler=_handle)
