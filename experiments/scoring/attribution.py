"""Direct attribution of each migration and preemption from the run's own tables, no
replay (metrics.md, "Harm"): the moved request's own change (the ledger's estimate)
and the collateral on its neighbours, in seconds of idle and in benefit:

- `source`: requests decoding on the source while the moved one was away had shorter
  steps, by `b + c*context` (the instance's decode-time coefficients) each;
- `destination`: requests decoding where it went had longer steps by as much;
- `prefill`: a recompute re-prefills the request where it resumes, stalling that
  batch for the prompt's prefill time;
- `kv`: hand-offs that started to the source in the freed KV before its next natural
  free (a request ending there), as many as the freed tokens held, came that much sooner.

A neighbour's change is its benefit in the run minus its benefit with its token times
moved back by the delay it gained or lost up to each token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from router.slo import SLO, benefit

PARTS = ("source", "destination", "prefill", "kv")
STARTS = {"transfer_end": "peer", "migrate_end": "peer", "resume": "instance"}
STOPS = {"preempt": "instance", "finish": "instance", "abort": "instance", "reject": "instance", "fault": "instance"}


@dataclass(frozen=True)
class Costs:
    """Each instance's decode coefficients `(a, b, c)` (`a + b*batch + c*context`) and
    prefill coefficients `(a, b, c)` (`a + b*tokens + c*tokens**2`)."""
    decode: np.ndarray
    prefill: np.ndarray


def residencies(events: pd.DataFrame) -> pd.DataFrame:
    """Where each request decoded, when: one row per stay (request, instance, start, end)."""
    rows, open_at = [], {}
    moves = events[events["kind"].isin([*STARTS, *STOPS, "migrate_end"])]
    for time, kind, request, instance, peer, detail in moves[["time_s", "kind", "request_id", "instance", "peer",
                                                               "detail"]].itertuples(index=False):
        if request < 0 or (kind == "preempt" and str(detail).startswith("engine")):
            continue
        stay = open_at.pop(request, None)
        if stay is not None:
            rows.append((request, stay[0], stay[1], time))
        if kind in STARTS:
            open_at[request] = (peer if STARTS[kind] == "peer" else instance, time)
    end = float(events["time_s"].max()) if len(events) else 0.0
    rows += [(request, where, start, end) for request, (where, start) in open_at.items()]
    return pd.DataFrame(rows, columns=["request_id", "instance", "start_s", "end_s"])


class Attribution:
    def __init__(self, requests: pd.DataFrame, tokens: pd.DataFrame, events: pd.DataFrame, end_s: float,
                 slos: dict[str, SLO], default: SLO, costs: Costs) -> None:
        self.costs, self.events = costs, events
        counts = requests["output_tokens"].to_numpy(dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.index = {int(r): k for k, r in enumerate(requests["request_id"])}
        self.arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
        self.times = tokens["time_s"].to_numpy(dtype=np.float64)
        self.counts = counts
        self.finished = (requests["status"] == "finished").to_numpy()
        self.prompt = requests["prompt_tokens"].to_numpy(dtype=np.int64)
        tenants = requests["tenant"].astype(str).to_numpy() if "tenant" in requests else np.full(len(requests), "")
        names = sorted(set(tenants))
        self.slos = [slos.get(t, default) for t in names]
        self.slo_index = np.searchsorted(np.array(names), tenants)
        self.v = np.array([slo.v for slo in self.slos])[self.slo_index]
        index = np.arange(len(self.times)) - np.repeat(self.offsets[:-1], counts) + 1
        self.late = self.times - np.repeat(self.arrival, counts) - np.repeat(self.v, counts) * index
        self.prefix, self.suffix = running_max(self.late, counts), running_max(self.late[::-1], counts[::-1])[::-1]
        self.span = float(self.times.max()) + 1.0 if len(self.times) else 1.0
        self.keys = np.repeat(np.arange(len(counts)) * self.span, counts) + self.times
        self.worst = np.array([self.prefix[self.offsets[k + 1] - 1] if counts[k] else -np.inf
                               for k in range(len(counts))])
        self.end_s = end_s
        stays = residencies(events)
        self.stays = {int(i): (part["start_s"].to_numpy(), part["end_s"].to_numpy(), part["request_id"].to_numpy())
                      for i, part in stays.groupby("instance")}
        self.own = {int(r): part for r, part in stays.groupby("request_id")}
        handoffs = events[events["kind"] == "transfer_start"]
        prefilled = events[events["kind"] == "prefill_end"].groupby("request_id")["time_s"].min()
        waited = handoffs["time_s"].to_numpy() - prefilled.reindex(handoffs["request_id"]).to_numpy()
        handoffs = handoffs[waited > 0]
        self.handoffs = {int(i): (part["time_s"].to_numpy(), np.array([self.index[int(r)] for r in part["request_id"]],
                                                                       dtype=np.int64))
                         for i, part in handoffs.groupby("peer")}
        frees = events[events["kind"].isin(["finish", "preempt", "migrate_end"])]
        self.frees = {int(i): (part["time_s"].to_numpy(), part["request_id"].to_numpy())
                      for i, part in frees.groupby("instance")}

    def tokens_of(self, k: int) -> np.ndarray:
        return self.times[self.offsets[k]:self.offsets[k + 1]]

    def _cut(self, ks: np.ndarray, at: float) -> np.ndarray:
        """For each request of `ks`, the position (in the run's tokens) of its first token at or after `at`."""
        return np.searchsorted(self.keys, ks * self.span + at)

    def _before(self, ks: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """The largest lateness `t_i - a - v*i` of each request's tokens before `cut`."""
        return np.where(cut > self.offsets[ks], self.prefix[np.maximum(cut - 1, 0)], -np.inf)

    def _from(self, ks: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """The largest lateness of each request's tokens from `cut` on."""
        last = len(self.late) - 1
        return np.where(cut < self.offsets[ks + 1], self.suffix[np.minimum(cut, max(last, 0))], -np.inf)

    def _changes(self, ks: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
        """Total benefit and idle of requests `ks` as run, minus those had their largest
        lateness been `moved` (the count of their tokens is the same)."""
        if not len(ks):
            return 0.0, 0.0
        actual = self._idle(ks, self.worst[ks])
        other = self._idle(ks, moved)
        gain = self._benefits(ks, actual) - self._benefits(ks, other)
        return float(gain.sum()), float(np.sum(actual - other))

    def _idle(self, ks: np.ndarray, late: np.ndarray) -> np.ndarray:
        idle = np.maximum(late, 0.0)
        wait = self.end_s - self.arrival[ks] - self.v[ks] * (self.counts[ks] + 1)
        return np.where(self.finished[ks], idle, np.maximum(idle, wait))

    def _benefits(self, ks: np.ndarray, idle: np.ndarray) -> np.ndarray:
        out = np.empty(len(ks))
        groups = self.slo_index[ks]
        for g in np.unique(groups):
            mask = groups == g
            out[mask] = benefit(self.counts[ks][mask], idle[mask], self.finished[ks][mask], self.slos[g])
        return out

    def neighbours(self, instance: int, start: float, end: float, leave_out: int) -> np.ndarray:
        """Positions of the requests that decoded on `instance` between `start` and `end`."""
        stays = self.stays.get(instance)
        if stays is None or end <= start:
            return np.zeros(0, dtype=np.int64)
        starts, ends, ids = stays
        ids = np.unique(ids[(starts < end) & (ends > start)])
        return np.array([self.index[int(i)] for i in ids if i != leave_out], dtype=np.int64)

    def step_delay(self, request: int, instance: int, start: float, end: float, per_step: float,
                   sign: float) -> tuple[float, float]:
        """The change on `instance`'s other requests of steps longer by `per_step` (sign +1)
        or shorter (sign -1, they would have been that much later) between `start` and `end`:
        a token in the window moves by `per_step` for each of its request's tokens in the
        window up to it, a later token by the window's whole count."""
        ks = self.neighbours(instance, start, end, request)
        if not len(ks):
            return 0.0, 0.0
        a, b = self._cut(ks, start), self._cut(ks, end)
        counts = b - a
        step = -sign * per_step
        moved = np.maximum(self._before(ks, a), self._from(ks, b) + step * counts)
        inside = counts > 0
        if inside.any():
            first, n = a[inside], counts[inside]
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            late = self.late[np.repeat(first, n) + within] + step * (within + 1)
            heads = np.cumsum(n) - n
            moved[inside] = np.maximum(moved[inside], np.maximum.reduceat(late, heads))
        return self._changes(ks, moved)

    def stall(self, request: int, instance: int, at: float, seconds: float) -> tuple[float, float]:
        """The change on `instance`'s other requests of a stall of `seconds` at `at`."""
        ks = self.neighbours(instance, at, at + 1e-9, request)
        cut = self._cut(ks, np.nextafter(at, np.inf))
        return self._changes(ks, np.maximum(self._before(ks, cut), self._from(ks, cut) - seconds))

    def freed(self, request: int, instance: int, at: float, tokens: int) -> tuple[float, float]:
        """The change on hand-offs that started to `instance` in the KV freed at `at`."""
        times, ids = self.frees.get(instance, (np.zeros(0), np.zeros(0)))
        later = times[(times > at) & (ids != request)]
        natural = float(later.min()) if len(later) else self.end_s
        starts, ks = self.handoffs.get(instance, (np.zeros(0), np.zeros(0, dtype=np.int64)))
        took = (starts >= at) & (starts < natural)
        ks, starts = ks[took], starts[took]
        fits = np.cumsum(self.prompt[ks]) <= tokens
        ks, later = ks[fits], natural - starts[fits]
        return self._changes(ks, self.worst[ks] + later)

    def move(self, request: int, source: int, start: float, stall_start: float, mode: str, done: bool) -> dict:
        """The collateral of one move, by part, in benefit and in seconds of idle."""
        out = {**{f"collateral_{p}": 0.0 for p in PARTS}, **{f"collateral_{p}_idle_s": 0.0 for p in PARTS}}
        if not done or np.isnan(stall_start):
            return out
        k = self.index[request]
        context = int(self.prompt[k] + np.sum(self.tokens_of(k) <= stall_start))
        stays = self.own.get(request)
        later = stays[stays["start_s"] >= start] if stays is not None else stays
        after = None if later is None or not len(later) else later.iloc[0]
        last = float(stays["end_s"].max()) if stays is not None and len(stays) else self.end_s
        away_until = float(after["start_s"]) if after is not None and int(after["instance"]) == source else last
        parts = {"source": self.step_delay(request, source, stall_start, away_until, self._per_step(source, context),
                                           -1.0),
                 "kv": self.freed(request, source, stall_start, context)}
        if after is not None:
            where, joined, left = int(after["instance"]), float(after["start_s"]), float(after["end_s"])
            if where != source:
                parts["destination"] = self.step_delay(request, where, joined, left,
                                                       self._per_step(where, context), 1.0)
            if "recompute" in mode:
                a, b, c = self.costs.prefill[where]
                parts["prefill"] = self.stall(request, where, joined, a + b * context + c * context * context)
        for part, (change, idle) in parts.items():
            out[f"collateral_{part}"], out[f"collateral_{part}_idle_s"] = change, idle
        return out

    def _per_step(self, instance: int, context: int) -> float:
        _, b, c = self.costs.decode[instance]
        return float(b + c * context)


def running_max(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The running maximum of `values` within each segment of `counts` values."""
    out, offset = values.copy(), 0
    for count in counts:
        if count:
            np.maximum.accumulate(out[offset:offset + count], out=out[offset:offset + count])
        offset += count
    return out


def attribute(ledger: pd.DataFrame, attribution: Attribution, tolerance: float) -> pd.DataFrame:
    """The ledger with each move's collateral, its attributed change (own + collateral)
    and verdict: harmful below `-tolerance`, helpful above `tolerance`, else neutral."""
    rows = [attribution.move(int(r.request_id), int(r.source), float(r.start_s), float(r.stall_start_s), str(r.mode),
                             r.outcome == "done") for r in ledger.itertuples(index=False)]
    parts = pd.DataFrame(rows, index=ledger.index, columns=[*(f"collateral_{p}" for p in PARTS),
                                                             *(f"collateral_{p}_idle_s" for p in PARTS)])
    table = pd.concat([ledger, parts], axis=1)
    table["collateral"] = parts[[f"collateral_{p}" for p in PARTS]].sum(axis=1)
    table["collateral_idle_s"] = parts[[f"collateral_{p}_idle_s" for p in PARTS]].sum(axis=1)
    table["attributed_change"] = table["benefit_change_est"] + table["collateral"]
    table["attributed_verdict"] = verdicts(table["attributed_change"], tolerance)
    return table


def verdicts(change: pd.Series, tolerance: float) -> np.ndarray:
    values = change.to_numpy(dtype=np.float64)
    return np.select([np.isnan(values), values < -tolerance, values > tolerance],
                     ["not replayed", "harmful", "helpful"], "neutral")
