"""Readable terminal output of run summaries: one column per run, side by side."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from router.slo import SCHEMES

ROWS = (
    ("requests", "requests", "{:d}"),
    ("finished", "finished", "{:d}"),
    ("output tokens", "output_tokens", "{:d}"),
    ("serving time (s)", "serving_time_s", "{:.3f}"),
    ("throughput (tok/s)", "throughput_tokens_per_s", "{:.2f}"),
    ("smooth goodput (benefit/s)", "smooth_goodput", "{:.2f}"),
    ("fluidity-index (mean)", "fluidity_index_mean", "{:.4f}"),
    ("Andes QoE (mean)", "andes_qoe_mean", "{:.4f}"),
)
DISTRIBUTIONS = (("TTFT", "ttft_s"), ("TBT", "tbt_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s"), ("idle latency", "idle_latency_s"))


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def summary_table(summaries: dict[str, dict]) -> Table:
    table = Table(title="pdlab metrics", show_lines=False)
    table.add_column("metric")
    for name in summaries:
        table.add_column(name, justify="right")
    values = list(summaries.values())
    for label, key, pattern in ROWS:
        table.add_row(label, *(_fmt(s[key], pattern) for s in values))
    for scheme in SCHEMES:
        for label, key, pattern in (("attainment", "slo_attainment", "{:.2%}"),
                                    ("token goodput (tok/s)", "token_goodput", "{:.2f}"),
                                    ("request goodput (req/s)", "request_goodput", "{:.3f}")):
            table.add_row(f"{scheme} {label}", *(_fmt(s["schemes"][scheme][key], pattern) for s in values))
    for label, key in DISTRIBUTIONS:
        for stat in ("mean", "p50", "p90", "p99"):
            table.add_row(f"{label} {stat} (s)", *(_fmt(s[key][stat], "{:.4f}") for s in values))
    return table


def parameters_line(summary: dict) -> str:
    p = summary["parameters"]
    return (f"SLO: ttft_tbt TTFT {p['ttft']} s / TBT {p['tbt']} s; ttft_tpot TPOT {p['tpot']} s; e2e {p['e2e']} s; "
            f"smooth V {p['v']} s/token, L {p['l']} s; benefit n - {p['alpha']}*f, f={p['f']} (l_max {p['l_max']} s). "
            f"End of run {p['end_s']:.3f} s from {p['end_from']}; warm-up {p['warmup_s']} s, cool-down {p['cooldown_s']} s "
            f"({p['excluded_by_window']} requests left out); percentiles: {p['percentiles']}. Rates per second of "
            f"{p.get('interval', 'the run')}; the JSON's top-level slo_attainment and request_goodput are the "
            f"{p.get('headline_scheme', 'ttft_tbt')} scheme's.")


def print_summaries(summaries: dict[str, dict], console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(summaries))
    console.print(parameters_line(next(iter(summaries.values()))), style="dim")


def ranges_table(tables: dict, seeds: int) -> Table:
    """Per variant, each metric's median and range over the noise seeds."""
    table = Table(title=f"pdlab run: {seeds} noise seeds, median [min, max]", show_lines=False)
    table.add_column("metric")
    for name in tables:
        table.add_column(name, justify="right")
        table.add_column("spread", justify="right")
    first = next(iter(tables.values()))
    for row in range(len(first)):
        cells = []
        for found in tables.values():
            r = found.iloc[row]
            cells += [f"{r['median']:.4g} [{r['min']:.4g}, {r['max']:.4g}]",
                      f"{r['spread']:.1%}" + (" knife-edge" if r["knife_edge"] else "")]
        table.add_row(first.iloc[row]["metric"], *cells)
    return table


def print_ranges(tables: dict, seeds: int, console: Console | None = None) -> None:
    console = console or Console()
    console.print(ranges_table(tables, seeds))
    console.print("spread: (max - min) / median over the seeds; knife-edge above 10%. Only the step-time noise "
                  "differs between the seeds: the workload and the router's own seed stay.", style="dim")
