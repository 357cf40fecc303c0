"""The quickstart: `configs/sweeps/quickstart.yaml`, a live disaggregated cluster on a local
Ray, serving the same requests under the classic-goodput and the smooth-goodput
router, with the results table, plots and report.md written to one folder."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from experiments.sweeps.report import SHOWN
from experiments.sweeps.spec import load_sweep
from experiments.sweeps.sweep import run_sweep

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "quickstart.yaml"
COLUMNS = ("policy", "ttft_tbt_attainment", "smooth_goodput", "ttft_p99_s", "tbt_p99_s", "idle_latency_p99_s",
           "preemptions", "migrations_started", "rejected")


def quickstart(out: Path, overrides: list[str] = ()) -> int:
    console = Console(stderr=True)
    sweep = load_sweep(CONFIG, list(overrides))
    console.print(f"[bold]pdlab quickstart[/bold]: {CONFIG.name}, {len(sweep.points)} live runs on a local Ray, "
                  f"results in {out}")
    results = run_sweep(sweep, out, console=console)
    table = Table(title="classic vs smooth goodput routers, live")
    for column in COLUMNS:
        table.add_column(SHOWN[column][0])
    for _, row in results.iterrows():
        table.add_row(*(SHOWN[c][1].format(int(row[c]) if SHOWN[c][1] == "{:d}" else row[c]) for c in COLUMNS))
    out_console = Console()
    Console(width=max(out_console.width, 110)).print(table)
    console.print(f"wrote {out / 'report.md'}, {out / 'plots'}, {out / 'results.csv'} and the runs in {out / 'runs'}")
    return 0
