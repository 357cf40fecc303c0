"""Plots of runs, written as PNG and SVG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.runs.runformat import Run  # noqa: E402
from router.slo import SLO  # noqa: E402


def _save(figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        target = path.with_suffix(suffix)
        figure.savefig(target, dpi=120, bbox_inches="tight")
        written.append(target)
    plt.close(figure)
    return written


def token_timelines(runs: dict[str, Run], request_ids: list, slo: SLO, path: Path) -> list[Path]:
    """Tokens received against time since arrival, one panel per request, with the
    `smooth` deadline line `L + V*i` (as the paper's figures 5 to 8)."""
    figure, axes = plt.subplots(1, len(request_ids), figsize=(4.5 * len(request_ids), 3.6), squeeze=False)
    for axis, request_id in zip(axes[0], request_ids):
        longest = 0
        for label, run in runs.items():
            arrival = float(run.requests.loc[run.requests["request_id"] == request_id, "arrival_s"].iloc[0])
            times = run.tokens.loc[run.tokens["request_id"] == request_id, "time_s"].to_numpy() - arrival
            axis.step(times, np.arange(1, len(times) + 1), where="post", label=label)
            longest = max(longest, len(times))
        index = np.arange(1, longest + 1)
        axis.plot(slo.l + slo.v * index, index, "k--", linewidth=1, label="deadline L + V*i")
        axis.set_title(f"request {request_id}")
        axis.set_xlabel("seconds since arrival")
        axis.set_ylabel("tokens received")
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)


def _in_order(values) -> list:
    return list(dict.fromkeys(values))


def versus_rate(table, columns: list[tuple[str, str]], path: Path, xlabel: str = "rate",
                target: float | None = None) -> list[Path]:
    """A sweep's results against rate: one row of panels per (column, label), one
    panel column per cluster, one line per policy (the mean over seeds and noise seeds,
    with their range shaded when there are several); a dashed line at `target`."""
    clusters, policies = _in_order(table["cluster"]), _in_order(table["policy"])
    figure, axes = plt.subplots(len(columns), len(clusters), figsize=(4.4 * len(clusters), 3.0 * len(columns)),
                                squeeze=False, sharex="col")
    for row, (column, label) in enumerate(columns):
        for col, cluster in enumerate(clusters):
            axis = axes[row][col]
            for policy in policies:
                part = table[(table["cluster"] == cluster) & (table["policy"] == policy)]
                stats = part.groupby("rate")[column].agg(["mean", "min", "max"]).sort_index()
                line, = axis.plot(stats.index, stats["mean"], marker="o", markersize=4, label=policy)
                if part.groupby("rate").size().max() > 1:
                    axis.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
            if target is not None:
                axis.axhline(target, color="k", linestyle="--", linewidth=1, label="target")
            axis.grid(alpha=0.3)
            if row == 0:
                axis.set_title(cluster)
            if col == 0:
                axis.set_ylabel(label)
            if row == len(columns) - 1:
                axis.set_xlabel(xlabel)
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)


def harm_versus_rate(table, path: Path, xlabel: str = "rate") -> list[Path]:
    """Harmful moves (by attribution) per 1,000 requests against rate, one panel per
    cluster, one line per policy (the mean over seeds) with the band from the lowest to
    the highest end of the points' 95% intervals."""
    clusters, policies = _in_order(table["cluster"]), _in_order(table["policy"])
    figure, axes = plt.subplots(1, len(clusters), figsize=(4.4 * len(clusters), 3.2), squeeze=False)
    for axis, cluster in zip(axes[0], clusters):
        for policy in policies:
            part = table[(table["cluster"] == cluster) & (table["policy"] == policy)]
            stats = part.groupby("rate").agg(mean=("attributed_harmful_per_1k", "mean"),
                                             low=("attributed_harmful_per_1k_low", "min"),
                                             high=("attributed_harmful_per_1k_high", "max")).sort_index()
            line, = axis.plot(stats.index, stats["mean"], marker="o", markersize=4, label=policy)
            axis.fill_between(stats.index, stats["low"], stats["high"], color=line.get_color(), alpha=0.15)
        axis.set_title(cluster)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("harmful moves / 1,000 requests\n(attribution, 95% CI)")
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)


def counts_by_policy(table, columns: list[tuple[str, str]], path: Path) -> list[Path]:
    """Grouped bars of event counts per policy, summed over rates and seeds, one panel per cluster."""
    clusters, policies = _in_order(table["cluster"]), _in_order(table["policy"])
    panel_width = max(4.4, 0.5 * len(policies) * len(columns))
    figure, axes = plt.subplots(1, len(clusters), figsize=(panel_width * len(clusters), 3.4), squeeze=False,
                                sharey=True)
    width = 0.8 / len(columns)
    positions = np.arange(len(policies))
    names = [c for c, _ in columns]
    highest = float(table.groupby(["cluster", "policy"])[names].sum().to_numpy().max(initial=0))
    for axis, cluster in zip(axes[0], clusters):
        totals = table[table["cluster"] == cluster].groupby("policy")[names].sum()
        for k, (column, label) in enumerate(columns):
            values = [float(totals[column].get(policy, 0)) for policy in policies]
            axis.bar(positions + (k - (len(columns) - 1) / 2) * width, values, width, label=label)
        axis.set_xticks(positions, policies, rotation=20, ha="right")
        axis.set_ylim(0, max(1.0, 1.1 * highest))
        axis.set_title(f"{cluster} (total over rates and seeds)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("count")
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)
