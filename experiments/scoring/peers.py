"""Peer metrics for side-by-side reports: Metron's fluidity-index and Andes' QoE,
vectorised over `Timelines` (definitions and choices in docs/metrics.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from router.slo import TOLERANCE_S
from router.timelines import Timelines


def _floor(x: np.ndarray) -> np.ndarray:
    """Floor that forgives float noise: (0.35-0.05)/0.1 is 2.9999999999999996, read as 3."""
    return np.floor(x + TOLERANCE_S)


def fluidity_index(tl: Timelines, d_p: float, d_d: float, finished: np.ndarray, waited: np.ndarray) -> np.ndarray:
    """1 - missed/total deadlines, Metron's rule: token j is due at the last reset
    point plus one `d_d` per token (the first at `d_p`), earliness carries over,
    a late token counts one miss per elapsed `d_d` and becomes the new reset point.

    With `w_j = t_j - j*d_d` the reset point is the running maximum of `w`
    (starting at `d_p - d_d`), so a token is late exactly when its `w` sets a new
    record. An unfinished request also misses the deadlines that passed while it
    waited for its next token until the end of the run.
    """
    n = tl.counts
    index = tl.token_index()
    w = tl.times - d_d * index
    w0 = d_p - d_d
    request = tl.request_of_token()
    running = pd.Series(w).groupby(request).cummax().to_numpy()
    before = np.empty_like(running)
    if len(running):
        before[0] = -np.inf
        before[1:] = running[:-1]
        before[tl.offsets[:-1][n > 0]] = -np.inf
    anchor = np.maximum(before, w0)
    late = w > anchor + TOLERANCE_S
    misses = 1.0 + _floor((w[late] - anchor[late]) / d_d)
    missed = np.bincount(request[late], weights=misses, minlength=len(tl))
    on_time = n - np.bincount(request[late], minlength=len(tl))

    last_anchor = np.maximum(tl.segment_max(w, empty=-np.inf), w0)
    pending = waited - d_d * (n + 1)
    waiting_late = ~finished & (pending > last_anchor + TOLERANCE_S)
    missed = missed + np.where(waiting_late, 1.0 + _floor((pending - last_anchor) / d_d), 0.0)
    total = missed + on_time
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - missed / total, 1.0)


def andes_qoe(tl: Timelines, ttft: float, speed: float, finished: np.ndarray, waited: np.ndarray) -> np.ndarray:
    """1 - (area by which the delivered-token curve A lags the expected curve E) /
    (area under E), capped at 1. `E(t) = min(m, speed*(t - ttft))` with `m` the
    tokens delivered (one more for an unfinished request, which still waits);
    the areas run until the last token or the end of E, whichever is later, or,
    for an unfinished request, until the end of the run.

    Since both curves rise, 1 - lag/area(E) = area(min(E, A)) / area(E), and
    area(min(E, A)) sums, over each delivered token k, the time both curves
    stay above the levels y in [k-1, k): `H - max(ttft + y/speed, t_k)`.
    """
    n = tl.counts
    target = np.where(finished, n, n + 1).astype(np.float64)
    horizon = np.where(finished, np.fmax(np.nan_to_num(tl.last(), nan=0.0), ttft + target / speed), waited)
    expected = _area_below_ramp(horizon - ttft, 0.0, target, speed)
    h = np.repeat(horizon, n) - ttft
    t = tl.times - ttft
    k = tl.token_index().astype(np.float64)
    knee = np.clip(speed * t, k - 1.0, k)
    flat = np.maximum(h - t, 0.0) * (knee - (k - 1.0))
    both = flat + _area_below_ramp(h, knee, k, speed)
    shared = np.bincount(tl.request_of_token(), weights=both, minlength=len(tl))
    with np.errstate(invalid="ignore", divide="ignore"):
        qoe = np.where(expected > 0, shared / expected, 1.0)
    return np.minimum(qoe, 1.0)


def _area_below_ramp(h, low, high, speed):
    """Integral over levels y in [low, high] of max(0, h - y/speed)."""
    top = np.clip(speed * h, low, high)
    return np.maximum(h * (top - low) - (top * top - low * low) / (2.0 * speed), 0.0)
