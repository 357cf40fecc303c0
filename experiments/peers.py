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
    misses_per_token = np.where(late, 1.0 + _floor((w - anchor) / d_d), 0.0)
    missed = np.bincount(request, weights=misses_per_token, minlength=len(tl))
    on_time = np.bincount(request, weights=~late, minlength=len(tl))

    last_anchor = np.maximum(tl.segment_max(w, empty=-np.inf), w0)
    pending = waited - d_d * (n + 1)
    waiting_late = ~finished & (pending > last_anchor + TOLERANCE_S)
    missed = missed + np.where(waiting_late, 1.0 + _floor((pending - last_anchor) / d_d), 0.0)
    total = missed + on_time
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - missed / total, 1.0)


def _lag_integral(x: np.ndarray, level: np.ndarray, start: float, target: np.ndarray, speed: float) -> np.ndarray:
    """Integral over [0, x] of max(0, min(target, speed*(u - start)) - level) du."""
    p = start + level / speed
    q = start + target / speed
    height = np.maximum(target - level, 0.0)
    ramp = 0.5 * speed * np.clip(x - p, 0.0, np.maximum(q - p, 0.0)) ** 2
    flat = height * np.maximum(x - np.maximum(q, p), 0.0)
    return np.where(level < target, ramp + flat, 0.0)


def andes_qoe(tl: Timelines, ttft: float, speed: float, finished: np.ndarray, waited: np.ndarray) -> np.ndarray:
    """1 - (area by which the delivered-token curve lags the expected one) /
    (area under the expected curve), capped at 1. The expected curve is
    `min(n, speed*(t - ttft))`; it is read until the last token or the end of
    the expected curve, whichever is later. An unfinished request expects one
    more token than it got and is read until the end of the run."""
    n = tl.counts
    target = np.where(finished, n, n + 1).astype(np.float64)
    horizon = np.where(finished, np.fmax(np.nan_to_num(tl.last(), nan=0.0), ttft + target / speed), waited)
    starts_per_request = n + 1
    request = np.repeat(np.arange(len(tl)), starts_per_request)
    level = np.arange(len(request)) - np.repeat(np.cumsum(starts_per_request) - starts_per_request, starts_per_request)
    token_slot = np.ones(len(request), dtype=bool)
    token_slot[np.cumsum(starts_per_request) - starts_per_request] = False
    begin = np.zeros(len(request))
    begin[token_slot] = tl.times
    end = np.empty(len(request))
    end[:-1] = begin[1:]
    end[np.cumsum(starts_per_request) - 1] = horizon
    end = np.maximum(end, begin)
    wanted = target[request]
    lag_parts = _lag_integral(end, level, ttft, wanted, speed) - _lag_integral(begin, level, ttft, wanted, speed)
    lag = np.bincount(request, weights=lag_parts, minlength=len(tl))
    expected = _lag_integral(horizon, np.zeros(len(tl)), ttft, target, speed)
    with np.errstate(invalid="ignore", divide="ignore"):
        qoe = np.where(expected > 0, 1.0 - lag / expected, 1.0)
    return np.minimum(qoe, 1.0)
