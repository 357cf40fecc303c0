"""The online SLO math of `router.tracker` for every request of a run at once: one row
per request (its slot), kept up to date as tokens arrive, so that a decision reads
the idle latency, slack and SLO status of any set of requests as arrays instead of
rebuilding them. The arithmetic is the tracker's, element for element, so the two
agree to the last bit (tests/test_slo_properties.py)."""
from __future__ import annotations

import numpy as np

from router.slo import SLO, TOLERANCE_S


ROW_FILLS = {"arrival": 0.0, "slo_index": 0, "v": 1.0, "ttft": 0.0, "tbt": 0.0, "n": 0, "first": np.nan,
             "last": np.nan, "display": 0.0, "lateness": 0.0, "max_gap": 0.0}


class SLOState:
    def __init__(self, arrivals: np.ndarray, slos: list[SLO], slo_index: np.ndarray) -> None:
        """`slos[slo_index[k]]` is the SLO of the request in slot k."""
        size = len(arrivals)
        self.arrival = np.asarray(arrivals, dtype=np.float64)
        self.slos, self.slo_index = tuple(slos), np.asarray(slo_index, dtype=np.int64)
        pick = lambda field: np.array([getattr(s, field) for s in self.slos], dtype=np.float64)[self.slo_index]
        self.v, self.ttft, self.tbt = pick("v"), pick("ttft"), pick("tbt")
        self.n = np.zeros(size, dtype=np.int64)
        self.first = np.full(size, np.nan)
        self.last = np.full(size, np.nan)
        self.display = np.zeros(size)
        self.lateness = np.zeros(size)
        self.max_gap = np.zeros(size)
        self.size = size

    def add(self, arrival: float, slo_index: int) -> int:
        """A row for a request that arrives while the run goes on (an open workload, a
        server): its slot. Rows grow by doubling; slots past `size` are unused."""
        slot = self.size
        if slot == len(self.arrival):
            grow = max(slot, 16)
            for name, fill in ROW_FILLS.items():
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.full(grow, fill, dtype=old.dtype)]))
        slo = self.slos[slo_index]
        self.arrival[slot], self.slo_index[slot] = arrival, slo_index
        self.v[slot], self.ttft[slot], self.tbt[slot] = slo.v, slo.ttft, slo.tbt
        self.size = slot + 1
        return slot

    def add_token(self, slot: int, time: float) -> None:
        """One token of request `slot` received at absolute `time`."""
        t = time - self.arrival[slot]
        v, n = self.v[slot], self.n[slot]
        if n == 0:
            self.first[slot] = t
        else:
            self.max_gap[slot] = max(self.max_gap[slot], t - self.last[slot])
        self.lateness[slot] = max(self.lateness[slot], t - v * (n + 1))
        self.display[slot] = max(t, self.display[slot] + v)
        self.n[slot] = n + 1
        self.last[slot] = t

    def add_tokens(self, slots: np.ndarray, time: float) -> None:
        """One token for each of `slots` (distinct), all received at `time`."""
        t = time - self.arrival[slots]
        v, n = self.v[slots], self.n[slots]
        seen = n > 0
        self.first[slots] = np.where(seen, self.first[slots], t)
        self.max_gap[slots] = np.where(seen, np.maximum(self.max_gap[slots], t - self.last[slots]), self.max_gap[slots])
        self.lateness[slots] = np.maximum(self.lateness[slots], t - v * (n + 1))
        self.display[slots] = np.maximum(t, self.display[slots] + v)
        self.n[slots] = n + 1
        self.last[slots] = t

    def add_steps(self, slots: np.ndarray, times: np.ndarray) -> None:
        """A token at each of `times` (in order) for every one of `slots` (distinct): a run
        of decode steps of one batch."""
        if not len(times) or not len(slots):
            return
        t = times[None, :] - self.arrival[slots, None]
        v, n = self.v[slots], self.n[slots]
        seen = n > 0
        first = np.where(seen, self.first[slots], t[:, 0])
        gaps = np.diff(t, axis=1, prepend=np.where(seen, self.last[slots], t[:, 0])[:, None])
        self.max_gap[slots] = np.maximum(self.max_gap[slots], gaps.max(axis=1))
        index = n[:, None] + np.arange(1, t.shape[1] + 1)[None, :]
        self.lateness[slots] = np.maximum(self.lateness[slots], (t - v[:, None] * index).max(axis=1))
        self.n[slots] = n + t.shape[1]
        self.display[slots] = v * self.n[slots] + self.lateness[slots]
        self.first[slots] = first
        self.last[slots] = t[:, -1]

    def idle_s(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Idle latency so far, counting the wait for the next token until `now`."""
        pending = (now - self.arrival[slots]) - self.v[slots] * (self.n[slots] + 1)
        return np.maximum(self.lateness[slots], pending)

    def slack_s(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Seconds of delivered text the reader still has to read at `now`."""
        return np.maximum(0.0, self.display[slots] + self.v[slots] - (now - self.arrival[slots]))

    def missed(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Whether the `ttft_tbt` SLO is already broken at `now`."""
        eps, waited, n = TOLERANCE_S, now - self.arrival[slots], self.n[slots]
        ttft, tbt = self.ttft[slots] + eps, self.tbt[slots] + eps
        started = (self.first[slots] > ttft) | (self.max_gap[slots] > tbt) | (waited - self.last[slots] > tbt)
        return np.where(n == 0, waited > ttft, started)
