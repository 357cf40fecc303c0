"""vLLM's `--goodput` as `vllm bench serve` defines it, so that a figure typed the way
vLLM users type it means what it means there: `KEY:MILLISECONDS` pairs (ttft, tpot,
e2el); a request is good when it finished and every given value is at most its limit
(a request of one token has TPOT 0); goodput is good requests per second of the
run's interval."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

KEYS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2e_s"}
SLO_FIELDS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e"}


def parse_goodput(pairs: list[str]) -> dict[str, float]:
    """`["ttft:50", "tpot:6"]` -> `{"ttft": 50.0, "tpot": 6.0}` (milliseconds)."""
    limits = {}
    for pair in pairs:
        key, sep, text = pair.partition(":")
        if not sep or key not in KEYS:
            raise ValueError(f"--goodput {pair!r}: expected KEY:MILLISECONDS with KEY one of {list(KEYS)}, "
                             f"e.g. ttft:50 tpot:6")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--goodput {pair!r}: expected a number of milliseconds after {key}:, got {text!r}") \
                from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--goodput {pair!r}: expected milliseconds >= 0, got {text!r}")
        limits[key] = value
    return limits


def slo_of(limits: dict[str, float]) -> dict[str, float]:
    """The same limits as pdlab SLO fields in seconds (its `ttft_tpot` and `e2e` schemes)."""
    return {SLO_FIELDS[key]: value / 1000 for key, value in limits.items()}


def vllm_goodput(table: pd.DataFrame, limits: dict[str, float], serving_s: float) -> dict:
    """Good requests by vLLM's rule, and per second of `serving_s`."""
    good = table["finished"].to_numpy(dtype=bool).copy()
    for key, limit in limits.items():
        values = table[KEYS[key]].to_numpy(dtype=np.float64)
        if key == "tpot":
            values = np.where(table["output_tokens"].to_numpy() <= 1, 0.0, values)
        good &= np.nan_to_num(values, nan=np.inf) <= limit / 1000
    count = int(good.sum())
    return {"limits_ms": limits, "good_requests": count,
            "request_goodput": count / serving_s if serving_s > 0 else None}
