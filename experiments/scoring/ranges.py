"""Prediction intervals: one configuration run under several noise seeds, each metric
given as its median and range over them, and the spread that marks it knife-edge."""
from __future__ import annotations

import numpy as np
import pandas as pd

from router.slo import SCHEMES

KNIFE_EDGE = 0.10
"""A metric whose range over the seeds exceeds this share of its median is knife-edge."""
HEADLINES = {"smooth goodput (benefit/s)": "smooth_goodput", "throughput (tok/s)": "throughput_tokens_per_s",
             "fluidity-index (mean)": "fluidity_index_mean", "Andes QoE (mean)": "andes_qoe_mean"}
DISTRIBUTIONS = {"TTFT": "ttft_s", "TBT": "tbt_s", "TPOT": "tpot_s", "E2E": "e2e_s", "idle latency": "idle_latency_s"}


def flat_metrics(summary: dict) -> dict[str, float]:
    """The summary's figures as `name: value`, e.g. `ttft_tbt attainment`, `TBT p99 (s)`."""
    found = {name: summary[key] for name, key in HEADLINES.items()}
    for scheme in SCHEMES:
        found[f"{scheme} attainment"] = summary["schemes"][scheme]["slo_attainment"]
        found[f"{scheme} token goodput (tok/s)"] = summary["schemes"][scheme]["token_goodput"]
    for name, key in DISTRIBUTIONS.items():
        for stat in ("p50", "p90", "p99"):
            found[f"{name} {stat} (s)"] = summary[key][stat]
    return found


def metric_ranges(summaries: list[dict]) -> pd.DataFrame:
    """metric, min, median, max, and spread ((max - min) / |median|) over `summaries`."""
    table = pd.DataFrame([flat_metrics(s) for s in summaries]).astype(float)
    low, mid, high = table.min(), table.median(), table.max()
    spread = ((high - low) / mid.abs()).where(mid.abs() > 0, np.where(high > low, np.inf, 0.0))
    return pd.DataFrame({"metric": table.columns, "min": low.to_numpy(), "median": mid.to_numpy(),
                         "max": high.to_numpy(), "spread": spread.to_numpy(),
                         "knife_edge": (spread > KNIFE_EDGE).to_numpy()})
