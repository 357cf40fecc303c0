"""The vectorised form of the SLO math, over many requests' token timelines at once.

`Timelines` is a CSR layout: request `r` owns `times[offsets[r]:offsets[r+1]]`, the
seconds since its arrival at which the client received its tokens, in index order.
Every function returns one value per request and agrees with `RequestTracker`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from router.slo import SLO, TOLERANCE_S


@dataclass(frozen=True)
class Timelines:
    offsets: np.ndarray
    times: np.ndarray

    @classmethod
    def from_lists(cls, timelines) -> "Timelines":
        counts = np.array([len(t) for t in timelines], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        times = np.concatenate([np.asarray(t, dtype=np.float64) for t in timelines]) if len(timelines) else np.empty(0)
        return cls(offsets, times.astype(np.float64, copy=False))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, mask: np.ndarray) -> "Timelines":
        """The timelines of the requests where `mask` is true, in order."""
        counts = self.counts[mask]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Timelines(offsets, self.times[np.repeat(mask, self.counts)])

    def token_index(self) -> np.ndarray:
        """The 1-based index of every token within its request."""
        return self._token_index

    def request_of_token(self) -> np.ndarray:
        return self._request_of_token

    @cached_property
    def _token_index(self) -> np.ndarray:
        index = np.arange(1, len(self.times) + 1, dtype=np.int64)
        index -= np.repeat(self.offsets[:-1], self.counts)
        return index

    @cached_property
    def _request_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts)

    def segment_max(self, values: np.ndarray, empty: float = np.nan) -> np.ndarray:
        out = np.full(len(self), empty, dtype=np.float64)
        nonempty = self.counts > 0
        if nonempty.any():
            out[nonempty] = np.maximum.reduceat(values, self.offsets[:-1][nonempty])
        return out

    def first(self) -> np.ndarray:
        out = np.full(len(self), np.nan)
        nonempty = self.counts > 0
        out[nonempty] = self.times[self.offsets[:-1][nonempty]]
        return out

    def last(self) -> np.ndarray:
        out = np.full(len(self), np.nan)
        nonempty = self.counts > 0
        out[nonempty] = self.times[self.offsets[1:][nonempty] - 1]
        return out

    def gaps(self) -> np.ndarray:
        """Every gap `t_i - t_(i-1)` within a request (i >= 2), pooled in order."""
        if len(self.times) == 0:
            return np.empty(0)
        diffs = np.diff(self.times)
        keep = np.ones(len(diffs), dtype=bool)
        starts = self.offsets[1:-1]
        keep[starts[(starts > 0) & (starts <= len(diffs))] - 1] = False
        return diffs[keep]

    def max_gap(self) -> np.ndarray:
        """The largest gap of each request; NaN below two tokens."""
        if len(self.times) == 0:
            return np.full(len(self), np.nan)
        diffs = np.concatenate([[np.nan], np.diff(self.times)])
        diffs[self.offsets[:-1][self.counts > 0]] = -np.inf
        out = self.segment_max(diffs)
        out[self.counts < 2] = np.nan
        return out


def lateness(tl: Timelines, v: float) -> np.ndarray:
    """`max(0, max_i (t_i - v*i))` per request: the idle latency of delivered tokens."""
    late = tl.segment_max(tl.times - v * tl.token_index(), empty=0.0)
    return np.maximum(late, 0.0)


def idle_latency(tl: Timelines, v: float, finished: np.ndarray, waited: np.ndarray) -> np.ndarray:
    """Idle latency (eq. 6); an unfinished request adds `waited - v*(n+1)`, where
    `waited` is the time from its arrival to the end of the run."""
    idle = lateness(tl, v)
    pending = waited - v * (tl.counts + 1)
    return np.where(finished, idle, np.maximum(idle, pending))


def tpot(tl: Timelines) -> np.ndarray:
    n = tl.counts
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (tl.last() - tl.first()) / (n - 1)
    return np.where(n > 1, out, np.nan)


def meets(tl: Timelines, slo: SLO, finished: np.ndarray) -> dict[str, np.ndarray]:
    """Whether each request meets each scheme; an unfinished request never does,
    a finished one without tokens always does."""
    n = tl.counts
    first, last = tl.first(), tl.last()
    empty = n == 0
    max_gap = np.nan_to_num(tl.max_gap(), nan=0.0)
    per_token = np.nan_to_num(tpot(tl), nan=0.0)
    eps = TOLERANCE_S
    status = {
        "ttft_tbt": empty | ((first <= slo.ttft + eps) & (max_gap <= slo.tbt + eps)),
        "ttft_tpot": empty | ((first <= slo.ttft + eps) & (per_token <= slo.tpot + eps)),
        "e2e": empty | (last <= slo.e2e + eps),
        "smooth": lateness(tl, slo.v) <= slo.l + eps,
    }
    return {scheme: ok & finished for scheme, ok in status.items()}


def slack(tl: Timelines, v: float, requests: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Reading slack `max(0, u_k + v - s)` of request `requests[q]` at `at[q]` seconds
    after its arrival, with `k` the tokens it had received by then."""
    out = np.empty(len(requests), dtype=np.float64)
    for q, (r, s) in enumerate(zip(requests, at)):
        times = tl.times[tl.offsets[r]:tl.offsets[r + 1]]
        k = int(np.searchsorted(times, s, side="right"))
        late = max(0.0, float(np.max(times[:k] - v * np.arange(1, k + 1)))) if k else 0.0
        out[q] = max(0.0, v * k + late + v - s)
    return out
