"""The online form of the SLO math: one request's scheme status, idle latency, slack
and benefit, updated in O(1) per delivered chunk, for routers deciding live.

Times are absolute (the run's clock); the tracker subtracts the arrival itself.
"""
from __future__ import annotations

import math

import numpy as np

from router.slo import SLO, TOLERANCE_S, benefit


class RequestTracker:
    __slots__ = ("slo", "arrival", "n", "first", "last", "display", "lateness", "max_gap")

    def __init__(self, arrival: float, slo: SLO) -> None:
        self.slo = slo
        self.arrival = arrival
        self.n = 0
        self.first = math.nan
        self.last = math.nan
        self.display = 0.0
        self.lateness = 0.0
        self.max_gap = 0.0

    def add_tokens(self, time: float, count: int = 1) -> None:
        """Record `count` tokens received together at absolute `time`."""
        if count <= 0:
            return
        t = time - self.arrival
        v = self.slo.v
        if self.n == 0:
            self.first = t
        else:
            self.max_gap = max(self.max_gap, t - self.last)
        self.lateness = max(self.lateness, t - v * (self.n + 1))
        self.display = max(t + v * (count - 1), self.display + v * count)
        self.n += count
        self.last = t

    def add_times(self, times: np.ndarray) -> None:
        """Record tokens received at absolute `times` (in order), one per entry."""
        if len(times) == 0:
            return
        t = np.asarray(times, dtype=np.float64) - self.arrival
        v = self.slo.v
        if self.n == 0:
            self.first = float(t[0])
            gaps = np.diff(t)
        else:
            gaps = np.diff(t, prepend=self.last)
        if len(gaps):
            self.max_gap = max(self.max_gap, float(gaps.max()))
        late = float((t - v * np.arange(self.n + 1, self.n + len(t) + 1)).max())
        self.lateness = max(self.lateness, late)
        self.n += len(t)
        self.display = v * self.n + self.lateness
        self.last = float(t[-1])

    def idle_latency(self, now: float | None = None, finished: bool = True) -> float:
        """Idle latency so far; an unfinished request also waits for its next token until `now`."""
        if finished:
            return self.lateness
        pending = (now - self.arrival) - self.slo.v * (self.n + 1)
        return max(self.lateness, pending)

    def slack(self, now: float) -> float:
        """Seconds of delivered text the user still has to read at `now`."""
        return max(0.0, self.display + self.slo.v - (now - self.arrival))

    def smooth_deadline(self, index: int) -> float:
        """Absolute deadline of token `index` (1-based) under the `smooth` scheme."""
        return self.arrival + self.slo.l + self.slo.v * index

    def missed_ttft_tbt(self, now: float) -> bool:
        """Whether the `ttft_tbt` SLO is already broken at `now`, finished or not."""
        slo, eps, waited = self.slo, TOLERANCE_S, now - self.arrival
        if self.n == 0:
            return waited > slo.ttft + eps
        return self.first > slo.ttft + eps or self.max_gap > slo.tbt + eps or waited - self.last > slo.tbt + eps

    def meets(self, scheme: str, finished: bool = True) -> bool:
        if not finished:
            return False
        if self.n == 0:
            return True
        slo, eps = self.slo, TOLERANCE_S
        if scheme == "ttft_tbt":
            return self.first <= slo.ttft + eps and self.max_gap <= slo.tbt + eps
        if scheme == "ttft_tpot":
            tpot = (self.last - self.first) / (self.n - 1) if self.n > 1 else 0.0
            return self.first <= slo.ttft + eps and tpot <= slo.tpot + eps
        if scheme == "e2e":
            return self.last <= slo.e2e + eps
        if scheme == "smooth":
            return self.lateness <= slo.l + eps
        raise ValueError(f"scheme: expected one of ttft_tbt, ttft_tpot, e2e, smooth, got {scheme!r}")

    def benefit(self, now: float | None = None, finished: bool = True) -> float:
        return float(benefit(self.n, self.idle_latency(now, finished), finished, self.slo))
