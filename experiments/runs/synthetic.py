"""Synthetic runs: token streams of a stylised serving system, for demos, tests and
benchmarks of the metrics (not a performance model; the simulator is that).

Requests arrive as a Poisson process; each waits a queueing delay, streams its
tokens at a base TBT with jitter, and now and then stalls for a prefill of
another request. A few are aborted, rejected or still running at the end.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.core.tables import ABORTED, FINISHED, REJECTED, UNFINISHED
from experiments.runs.runformat import Run


def synthetic_run(requests: int = 200, rate: float = 4.0, mean_output: int = 100, tbt: float = 0.03,
                  stall_probability: float = 0.005, stall_s: float = 0.4, queueing_s: float = 0.5,
                  seed: int = 0) -> Run:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, requests))
    planned = np.maximum(1, rng.geometric(1.0 / mean_output, requests))
    prompt = rng.integers(16, 2048, requests)
    status = rng.choice([FINISHED, ABORTED, REJECTED], requests, p=[0.97, 0.02, 0.01])
    delivered = np.where(status == REJECTED, 0,
                         np.where(status == ABORTED, (planned * rng.uniform(0, 1, requests)).astype(np.int64), planned))
    total = int(delivered.sum())
    gaps = tbt * rng.lognormal(0.0, 0.25, total)
    gaps += np.where(rng.random(total) < stall_probability, rng.exponential(stall_s, total), 0.0)
    offsets = np.concatenate([[0], np.cumsum(delivered)])
    owner = np.repeat(np.arange(requests), delivered)
    starts = offsets[:-1][delivered > 0]
    gaps[starts] = rng.exponential(queueing_s, len(starts)) + 0.0003 * prompt[delivered > 0]
    within = np.cumsum(gaps)
    within -= np.repeat(within[offsets[:-1].clip(max=max(total - 1, 0))] - gaps[offsets[:-1].clip(max=max(total - 1, 0))], delivered) if total else 0.0
    time_s = np.repeat(arrival, delivered) + within
    end_s = float(np.quantile(time_s, 0.995)) if total else float(arrival[-1])
    index = np.arange(total) - np.repeat(offsets[:-1], delivered) + 1
    keep = time_s <= end_s
    received = np.bincount(owner[keep], minlength=requests)
    status = np.where((received < delivered) & (status == FINISHED), UNFINISHED, status)
    requests_table = pd.DataFrame({"request_id": np.arange(requests), "arrival_s": arrival,
                                   "prompt_tokens": prompt, "output_tokens": received, "status": status})
    tokens = pd.DataFrame({"request_id": owner[keep], "index": index[keep], "time_s": time_s[keep]})
    meta = {"generator": "synthetic", "seed": seed, "end_s": end_s,
            "parameters": {"requests": requests, "rate": rate, "mean_output": mean_output, "tbt": tbt,
                           "stall_probability": stall_probability, "stall_s": stall_s, "queueing_s": queueing_s}}
    return Run(requests_table, tokens, meta=meta)
