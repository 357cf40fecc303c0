"""The quickstart: `configs/sweeps/quickstart.yaml`. First the simulator sweeps the
rate for the four policies over three seeds (curves with the seeds' range, harm
counts); then a live disaggregated cluster on a local Ray serves the same requests at
the config's rate under each policy in turn, beside what the simulator predicted for
that point. Each part writes its table, plots and report.md to its own folder."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from experiments.sweeps.spec import load_sweep
from experiments.sweeps.sweep import run_sweep

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "quickstart.yaml"
SIM_RATES = (4, 6, 8, 10)
SIM_SEEDS = (0, 1, 2)


def quickstart(out: Path, overrides: list[str] = ()) -> int:
    console = Console(stderr=True)
    live = load_sweep(CONFIG, list(overrides))
    simulated = load_sweep(CONFIG, [*overrides, "runtime=sim", f"sweep.rates=[{','.join(map(str, SIM_RATES))}]",
                                    f"sweep.seeds=[{','.join(map(str, SIM_SEEDS))}]"])
    console.print(f"[bold]pdlab quickstart[/bold]: {CONFIG.name}, {len(simulated.points)} simulated runs, then "
                  f"{len(live.points)} live runs on a local Ray; results in {out}")
    swept = run_sweep(simulated, out / "simulated", jobs=2, keep_runs=False, console=console)
    served = run_sweep(live, out / "live", console=console)
    shown = Console(width=max(Console().width, 80))
    shown.print(sweep_table(swept))
    shown.print(live_table(served, swept))
    console.print(f"wrote {out / 'simulated'} and {out / 'live'}: report.md, plots/, results.csv (live: the runs)")
    return 0


def sweep_table(swept: pd.DataFrame) -> Table:
    """Simulated smooth attainment and p99 idle latency by policy and rate, means over seeds."""
    means = swept.groupby(["policy", "rate"], sort=False)[["smooth_attainment", "idle_latency_p99_s"]].mean()
    rates = sorted(swept["rate"].unique())
    table = Table(title=f"simulated: smooth attainment, p99 idle s (mean of {swept['seed'].nunique()} seeds)",
                  box=box.SIMPLE_HEAD)
    table.add_column("policy", no_wrap=True)
    for rate in rates:
        table.add_column(f"{rate:g} req/s", justify="right", no_wrap=True)
    for policy in dict.fromkeys(swept["policy"]):
        table.add_row(policy, *(f"{means.loc[(policy, r), 'smooth_attainment']:.0%} "
                                f"{means.loc[(policy, r), 'idle_latency_p99_s']:.2f}" for r in rates))
    return table


def live_table(served: pd.DataFrame, swept: pd.DataFrame) -> Table:
    """Each live run beside the simulation of its point (seed and rate)."""
    predicted = swept.set_index(["policy", "rate", "seed"])
    rate = served["rate"].iloc[0]
    table = Table(title=f"live at {rate:g} req/s (simulated alike in brackets)", box=box.SIMPLE_HEAD)
    for column in ("policy", "smooth att.", "p99 idle s", "tokens/s", "parks", "harm/1k"):
        table.add_column(column, justify="left" if column == "policy" else "right", no_wrap=column == "policy")
    for row in served.itertuples(index=False):
        key = (row.policy, row.rate, row.seed)
        sim = predicted.loc[key] if key in predicted.index else None

        def pair(value: float, column: str, spec: str) -> str:
            return format(value, spec) + ("" if sim is None else f" ({format(sim[column], spec)})")
        table.add_row(row.policy, pair(row.smooth_attainment, "smooth_attainment", ".0%"),
                      pair(row.idle_latency_p99_s, "idle_latency_p99_s", ".2f"),
                      pair(row.throughput_tokens_per_s, "throughput_tokens_per_s", ".0f"), f"{int(row.parks)}",
                      f"{row.attributed_harmful_per_1k:.1f}")
    return table
