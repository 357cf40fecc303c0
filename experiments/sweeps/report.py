"""A sweep's plots and report.md: its parameters, the results table, the plots,
and a short reading computed from the numbers (docs/sweeps.md)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments.runs.runformat import read_run
from experiments.scoring.ranges import KNIFE_EDGE
from experiments.sweeps.plots import counts_by_policy, harm_versus_rate, token_timelines, versus_rate
from experiments.sweeps.spec import MULTI_TENANT_RATE, Sweep, timeline_points
from router.slo import SLO

RATE_PLOTS = {
    "classic_goodput": ("classic goodput", [("ttft_tbt_token_goodput", "classic goodput\n(ttft_tbt, tok/s)")]),
    "smooth_goodput": ("smooth goodput", [("smooth_goodput", "smooth goodput\n(benefit/s)")]),
    "attainment": ("SLO attainment", [("ttft_tbt_attainment", "ttft_tbt attainment"),
                                      ("smooth_attainment", "smooth attainment")]),
    "throughput": ("throughput", [("throughput_tokens_per_s", "throughput (tok/s)")]),
    "ttft_p99": ("p99 TTFT", [("ttft_p99_s", "p99 TTFT (s)")]),
    "tbt_p99": ("p99 TBT", [("tbt_p99_s", "p99 TBT (s)")]),
}
COUNTS = (("migrations_started", "migrations"), ("preemptions", "preemptions"), ("visible_harm", "with visible idle"),
          ("attributed_harmful", "harmful (attributed)"), ("harmful", "harmful (forked)"))
SHOWN = {  # column -> (header, format)
    "cluster": ("cluster", "{}"), "policy": ("policy", "{}"), "rate": ("rate", "{:g}"), "seed": ("seed", "{:d}"),
    "noise_seed": ("noise seed", "{:d}"),
    "throughput_tokens_per_s": ("throughput tok/s", "{:.1f}"), "ttft_tbt_token_goodput": ("classic goodput tok/s", "{:.1f}"),
    "smooth_goodput": ("smooth goodput /s", "{:.1f}"), "ttft_tbt_attainment": ("ttft_tbt att.", "{:.1%}"),
    "smooth_attainment": ("smooth att.", "{:.1%}"), "ttft_p99_s": ("p99 TTFT s", "{:.3f}"),
    "tbt_p99_s": ("p99 TBT s", "{:.3f}"), "idle_latency_p99_s": ("p99 idle s", "{:.3f}"),
    "migrations_started": ("migr.", "{:d}"), "migrations_aborted": ("migr. aborted", "{:d}"),
    "preemptions": ("preempt.", "{:d}"), "rejected": ("rejected", "{:d}"),
}
SATURATION = 0.95
NOISE_METRICS = ("ttft_tbt_attainment", "smooth_attainment", "ttft_tbt_token_goodput", "smooth_goodput",
                 "ttft_p99_s", "tbt_p99_s", "idle_latency_p99_s")


def rate_label(sweep: Sweep) -> str:
    if sweep.rate_key == MULTI_TENANT_RATE:
        return "rate_scale (x every tenant's arrival rate)"
    return f"rate ({sweep.rate_key})"


def timeline_plots(sweep: Sweep, stalled: dict[int, list], out: Path) -> dict[str, list[Path]]:
    """Per cluster: at the highest rate and first seed, the requests that the first
    policy left idle longest, under every policy."""
    index = {id(p): i for i, p in enumerate(sweep.points)}
    plots = {}
    for cluster in dict.fromkeys(p.cluster for p in sweep.points):
        points = [p for p in timeline_points(sweep) if p.cluster == cluster]
        ids = stalled[index[id(points[0])]]
        if not ids:
            continue
        runs = {p.policy: read_run(out / "runs" / p.folder) for p in points}
        path = out / "plots" / f"timelines_{cluster}"
        plots[f"timelines_{cluster}"] = token_timelines(runs, ids, SLO(**points[0].config.slo), path)
    return plots


def make_plots(sweep: Sweep, table: pd.DataFrame, stalled: dict[int, list], out: Path) -> dict[str, list[Path]]:
    plots = {name: versus_rate(table, columns, out / "plots" / name, rate_label(sweep))
             for name, (_, columns) in RATE_PLOTS.items()}
    counts = [(c, label) for c, label in COUNTS if c in table.columns]
    plots["counts"] = counts_by_policy(table, counts, out / "plots" / "counts")
    if "attributed_harmful_per_1k" in table.columns:
        plots["harm"] = harm_versus_rate(table, out / "plots" / "harm", rate_label(sweep))
    plots.update(timeline_plots(sweep, stalled, out))
    return plots


def _cell(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if pattern == "{:d}":
        value = int(value)
    return pattern.format(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, columns: dict[str, tuple[str, str]]) -> list[str]:
    shown = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(columns[c][0] for c in shown) + " |", "|" + "---|" * len(shown)]
    for row in table[shown].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, columns[c][1]) for c, v in zip(shown, row)) + " |")
    return lines


def parameters(sweep: Sweep) -> list[str]:
    axes, base = sweep.spec.sweep, sweep.base
    where = f"`{sweep.spec.base_config}`" if sweep.spec.base_config else "inline `base:`"
    clusters = "; ".join(f"`{label}`: " + (", ".join(f"`{c}`" for c in changes) or "the base cluster")
                         for label, changes in axes.clusters.items())
    policies = "; ".join(f"`{p.key}`" + (f" ({p.name}, params {p.params})" if p.params or p.label else "")
                         for p in axes.policies)
    size = ", ".join(f"{key} {value}" for key, value in (("requests", base.workload.requests),
                                                          ("duration_s", base.workload.duration_s)) if value)
    window = sweep.spec.window
    rows = [("sweep file", f"`{sweep.path}`"), ("base config", where + (f", with `{'`, `'.join(sweep.spec.set)}`"
                                                                         if sweep.spec.set else "")),
            ("clusters", clusters), ("policies", policies),
            ("rates", ", ".join(f"{r:g}" for r in axes.rates) + f" (sets `{sweep.rate_key}`)"),
            ("seeds", ", ".join(str(s) for s in sweep.seeds)), ("workload", size),
            ("SLO", ", ".join(f"{k} {v}" for k, v in SLO(**base.slo).as_dict().items())),
            ("scoring window", f"warm-up {window.warmup_s} s, cool-down {window.cooldown_s} s"),
            ("points", f"{len(sweep.points)} = " + " x ".join(
                f"{n} {word}" for n, word in ((len(axes.clusters), "clusters"), (len(axes.policies), "policies"),
                                              (len(axes.rates), "rates"), (len(sweep.seeds), "seeds"))))]
    return ["| parameter | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _best(frame: pd.DataFrame, column: str) -> tuple[list[str], float] | None:
    values = frame[column].dropna()
    if values.empty:
        return None
    top = float(values.max())
    return [str(p) for p in values.index[values == top]], top


def policy_sentences(cluster: str, policy: str, part: pd.DataFrame) -> list[str]:
    """`part`: one policy's means over seeds, indexed by rate (ascending)."""
    sentences, highest = [], float(part.index.max())
    for column, what, unit in (("smooth_goodput", "smooth goodput", "/s"),
                               ("ttft_tbt_token_goodput", "classic goodput", " tok/s")):
        values = part[column].dropna()
        if not values.empty:
            rate = float(values.idxmax())
            edge = ", the highest rate swept" if rate == highest else ""
            sentences.append(f"{what} peaks at rate {rate:g} ({values.max():.1f}{unit}{edge})")
    throughput = part["throughput_tokens_per_s"].dropna()
    if not throughput.empty:
        top = float(throughput.max())
        first = float(throughput.index[throughput >= SATURATION * top][0])
        sentences.append(f"throughput is highest at rate {float(throughput.idxmax()):g} ({top:.1f} tok/s) and first "
                         f"within {1 - SATURATION:.0%} of that at rate {first:g}")
    if not sentences:
        return []
    return [f"- `{cluster}`, `{policy}`: " + "; ".join(sentences) + "."]


def winner_sentences(cluster: str, means: pd.DataFrame) -> list[str]:
    """`means`: the cluster's means over seeds, indexed by (policy, rate)."""
    lines = []
    for rate, frame in means.groupby(level="rate", sort=True):
        frame = frame.droplevel("rate")
        classic, smooth = _best(frame, "ttft_tbt_token_goodput"), _best(frame, "smooth_goodput")
        if classic is None or smooth is None:
            continue
        same = "the same policy" if classic[0] == smooth[0] else "different policies"
        lines.append(f"- `{cluster}`, rate {rate:g}: classic goodput highest with {' = '.join(classic[0])} "
                     f"({classic[1]:.1f} tok/s), smooth goodput highest with {' = '.join(smooth[0])} "
                     f"({smooth[1]:.1f}/s): {same}.")
    return lines


def noise_ranges(table: pd.DataFrame) -> pd.DataFrame:
    """Per point (cluster, policy, rate, seed) and headline metric: its min, median and
    max over the noise seeds, the spread ((max - min) / |median|) and whether it is
    knife-edge (spread above `KNIFE_EDGE`)."""
    keys = ["cluster", "policy", "rate", "seed"]
    metrics = [c for c in NOISE_METRICS if c in table]
    long = table.melt(id_vars=keys, value_vars=metrics, var_name="metric")
    stats = long.groupby([*keys, "metric"], sort=False)["value"].agg(["min", "median", "max"]).reset_index()
    width, middle = stats["max"] - stats["min"], stats["median"].abs()
    stats["spread"] = (width / middle).where(middle > 0, width.where(width == 0, math.inf))
    stats["knife_edge"] = stats["spread"] > KNIFE_EDGE
    return stats


def noise_sentences(table: pd.DataFrame) -> list[str]:
    stats = noise_ranges(table)
    edge = stats.groupby("metric", sort=False).agg(points=("knife_edge", "size"), edge=("knife_edge", "sum"),
                                                   spread=("spread", "median"))
    return [f"- over the noise seeds, `{metric}` spreads {row.spread:.1%} (median over points); knife-edge "
            f"(over {KNIFE_EDGE:.0%}) at {row.edge} of {row.points} points" for metric, row in edge.iterrows()]


def reading(table: pd.DataFrame) -> list[str]:
    numeric = table.select_dtypes("number").columns.drop(["rate", "seed", "noise_seed"], errors="ignore")
    seeds = table["seed"].nunique()
    lines = [f"Numbers are means over {seeds} seeds." if seeds > 1 else "Numbers are from one seed per point."]
    if "noise_seed" in table:
        lines[0] = lines[0].rstrip(".") + f", each under {table['noise_seed'].nunique()} noise seeds."
        lines += noise_sentences(table)
    for cluster in dict.fromkeys(table["cluster"]):
        part = table[table["cluster"] == cluster]
        means = part.groupby(["policy", "rate"], sort=False)[list(numeric)].mean().sort_index(level="rate",
                                                                                           sort_remaining=False)
        for policy in dict.fromkeys(part["policy"]):
            lines += policy_sentences(cluster, policy, means.xs(policy, level="policy").sort_index())
        if part["policy"].nunique() > 1:
            lines += winner_sentences(cluster, means)
    return lines


def report(sweep: Sweep, table: pd.DataFrame, plots: dict[str, list[Path]], out: Path) -> str:
    titles = {name: title for name, (title, _) in RATE_PLOTS.items()}
    titles["counts"] = "migrations and preemptions per policy"
    titles["harm"] = "harmful moves per 1,000 requests (attribution, with the points' 95% intervals)"
    lines = [f"# Sweep `{sweep.name}`", "", "## Parameters", "", *parameters(sweep), "",
             "## Reading", "", *reading(table), "",
             "## Results", "", "Headline columns; every column is in `results.csv` and `results.parquet`.", "",
             *markdown_table(table, SHOWN), "", "## Plots", ""]
    for name, files in plots.items():
        png = next(f for f in files if f.suffix == ".png")
        title = titles.get(name) or f"token timelines, {name.removeprefix('timelines_')} (highest rate, first seed; " \
                                    "the first policy's requests of largest idle latency)"
        lines += [f"### {title}", "", f"![{name}]({png.relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


def write_outputs(sweep: Sweep, table: pd.DataFrame, stalled: dict[int, list], out: Path) -> Path:
    """plots/ (PNG and SVG) and report.md under `out`."""
    plots = make_plots(sweep, table, stalled, out)
    if "noise_seed" in table:
        noise_ranges(table).to_csv(out / "noise_ranges.csv", index=False)
    path = out / "report.md"
    path.write_text(report(sweep, table, plots, out))
    return path
