"""The output-delay trick (paper section 3.4) as a transform of a run.

A buffer between engine and client paces each request's tokens at exactly one per
`tbt`, holding the first token just long enough that no later token has to wait:
release `r_i = max_j (t_j - (j-1)*tbt) + (i-1)*tbt`. No token is released before it
was generated and none faster than one per `tbt`, so tail TBT falls; idle latency
cannot fall, since every token arrives no earlier than before.
"""
from __future__ import annotations

import numpy as np

from experiments.runs.runformat import Run
from experiments.scoring.metrics import timelines


def delay_output(run: Run, tbt: float) -> Run:
    if not np.isfinite(tbt) or tbt <= 0:
        raise ValueError(f"delay-output: expected a TBT in seconds > 0, got {tbt!r}")
    tl = timelines(run.requests, run.tokens)
    steps = (tl.token_index() - 1) * tbt
    hold = tl.segment_max(tl.times - steps)
    released = np.repeat(hold, tl.counts) + steps
    arrival = np.repeat(run.requests["arrival_s"].to_numpy(), tl.counts)
    tokens = run.tokens.copy()
    tokens["time_s"] = arrival + released
    meta = {**run.meta, "output_delay_tbt_s": tbt}
    if run.end_s is not None and len(tokens):
        meta["end_s"] = max(run.end_s, float(tokens["time_s"].max()))
    return Run(run.requests, tokens, run.events, meta)
