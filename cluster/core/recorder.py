"""The event log of a runtime, turned into the run format's tables at the end."""
from __future__ import annotations

from array import array

import numpy as np
import pandas as pd

from cluster.core.request import DECODING, FINAL, PREFILL_PIECE
from cluster.core.tables import EVENT_KINDS as KINDS
from cluster.core.tables import STEP_COLUMNS, UNFINISHED

EVENT_KINDS = tuple(KINDS)


class Recorder:
    def __init__(self) -> None:
        self.time, self.nbytes = array("d"), array("d")
        self.kind, self.request, self.instance, self.peer = array("b"), array("q"), array("q"), array("q")
        self.detail: list[str] = []
        self.decision = array("q")
        self.codes = {kind: code for code, kind in enumerate(EVENT_KINDS)}
        self.end_s = 0.0
        self.requests = pd.DataFrame()
        self.token_ids: np.ndarray | None = None
        self.step_rows: list[tuple] = []

    def event(self, time: float, kind: str, request: int = -1, instance: int = -1, peer: int = -1,
              nbytes: float = 0.0, detail: str = "", decision: int = -1) -> None:
        self.time.append(time)
        self.kind.append(self.codes[kind])
        self.request.append(request)
        self.instance.append(instance)
        self.peer.append(peer)
        self.nbytes.append(nbytes)
        self.detail.append(detail)
        self.decision.append(decision)

    def step(self, instance: int, end_s: float, seconds: float, shape, late_s: float = 0.0) -> None:
        """One engine iteration of a live run: where, when it ended (client clock), how
        long it took by the engine's clock, what it computed (a `StepShape`), and how
        late it started after the step before (`StepResult.late_s`)."""
        self.step_rows.append((instance, end_s, seconds, shape.prefill_tokens, shape.prefill_tokens_sq,
                               shape.decode_batch, shape.decode_context, late_s))

    def steps(self) -> pd.DataFrame | None:
        """The `steps` table (live runs), None when no step was recorded."""
        if not self.step_rows:
            return None
        return pd.DataFrame(self.step_rows, columns=[*STEP_COLUMNS, "late_s"])

    def kinds(self) -> list[str]:
        return [EVENT_KINDS[code] for code in self.kind]

    def events(self) -> pd.DataFrame:
        kinds = pd.Categorical.from_codes(np.frombuffer(self.kind, dtype=np.int8), categories=EVENT_KINDS)
        return pd.DataFrame({"time_s": np.frombuffer(self.time), "kind": np.asarray(kinds).astype(str),
                             "request_id": np.frombuffer(self.request, dtype=np.int64),
                             "instance": np.frombuffer(self.instance, dtype=np.int64),
                             "peer": np.frombuffer(self.peer, dtype=np.int64),
                             "bytes": np.frombuffer(self.nbytes), "detail": self.detail,
                             "decision": np.frombuffer(self.decision, dtype=np.int64)})

    def close(self, end_s: float, requests, instances) -> None:
        """Settle every request's tokens up to `end_s` and build the tables; requests
        that had not arrived by then are not part of the run."""
        self.end_s = end_s
        ordered = sorted((r for r in requests if r.arrival <= end_s), key=lambda r: (r.arrival, r.id))
        for request in ordered:
            if request.state == DECODING:
                instance = instances[request.instance]
                done = instance.step - request.join_step
                if done:
                    request.pieces.append((instance.id, request.join_step, done))
                request.generated = request.join_generated + done
        self.source, self.pieces, counts = _token_pieces(ordered, instances)
        self.requests = _request_table(ordered, counts)

    def close_live(self, end_s: float, requests, times: dict[int, array]) -> None:
        """Build the tables of a live run, whose tokens were stamped as they came."""
        self.end_s = end_s
        ordered = sorted((r for r in requests if r.id in times), key=lambda r: (r.arrival, r.id))
        arrays = [np.frombuffer(times[r.id], dtype=np.float64) for r in ordered]
        counts = np.array([len(a) for a in arrays], dtype=np.int64)
        self.source = np.concatenate(arrays) if arrays else np.zeros(0)
        self.pieces = (np.arange(len(ordered), dtype=np.int64), np.cumsum(counts) - counts, counts)
        self.requests = _request_table(ordered, counts)
        if counts.sum() and all(len(r.output) >= n for r, n in zip(ordered, counts)):
            self.token_ids = np.concatenate([np.asarray(r.output[:n], dtype=np.int64) for r, n in zip(ordered, counts)])

    @property
    def total_tokens(self) -> int:
        return int(self.requests["output_tokens"].sum())

    @property
    def tokens(self) -> pd.DataFrame:
        return self._token_frame(0, len(self.requests))

    def token_chunks(self, max_rows: int):
        """The tokens table in pieces of whole requests, at most `max_rows` rows each
        (or one request's tokens, if it alone has more)."""
        ends = np.cumsum(self.requests["output_tokens"].to_numpy())
        first = 0
        while first < len(self.requests):
            base = ends[first - 1] if first else 0
            last = max(first + 1, int(np.searchsorted(ends, base + max_rows, side="right")))
            yield first, last, self._token_frame(first, last)
            first = last

    def _token_frame(self, first: int, last: int) -> pd.DataFrame:
        owner, start, length = self.pieces
        lo, hi = np.searchsorted(owner, [first, last])
        start, length = start[lo:hi], length[lo:hi]
        gather = np.arange(int(length.sum()), dtype=np.int64)
        gather += np.repeat(start - (np.cumsum(length) - length), length)
        counts = self.requests["output_tokens"].to_numpy()[first:last]
        index = np.arange(1, len(gather) + 1, dtype=np.int64)
        index -= np.repeat(np.cumsum(counts) - counts, counts)
        ids = np.repeat(self.requests["request_id"].to_numpy()[first:last], counts)
        frame = pd.DataFrame({"request_id": ids, "index": index, "time_s": self.source[gather]}, copy=False)
        if self.token_ids is not None:
            frame["token_id"] = self.token_ids[gather]
        return frame


def _token_pieces(ordered, instances) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """Every request's tokens as pieces (a prefill's token, a run of decode steps) in
    order, each a slice of one source array of times: compact until asked for."""
    steps = [np.frombuffer(instance.step_end, dtype=np.float64) for instance in instances]
    base = np.concatenate([[0], np.cumsum([len(s) for s in steps])]).astype(np.int64)
    prefill = [time for r in ordered for index, time, _ in r.pieces if index == PREFILL_PIECE]
    source = np.concatenate(steps + [np.asarray(prefill, dtype=np.float64)])
    owner, start, length = array("q"), array("q"), array("q")
    next_prefill = int(base[-1])
    for position, request in enumerate(ordered):
        for index, first, count in request.pieces:
            owner.append(position)
            length.append(count)
            if index == PREFILL_PIECE:
                start.append(next_prefill)
                next_prefill += 1
            else:
                start.append(int(base[index]) + first)
    owner, start, length = (np.frombuffer(a, dtype=np.int64) for a in (owner, start, length))
    counts = np.bincount(owner, weights=length, minlength=len(ordered)).astype(np.int64)
    return source, (owner, start, length), counts


def _request_table(ordered, counts: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": np.fromiter((r.id for r in ordered), dtype=np.int64, count=len(ordered)),
        "arrival_s": np.fromiter((r.arrival for r in ordered), dtype=np.float64, count=len(ordered)),
        "prompt_tokens": np.fromiter((r.prompt for r in ordered), dtype=np.int64, count=len(ordered)),
        "output_tokens": counts,
        "status": [r.state if r.state in FINAL else UNFINISHED for r in ordered],
        "tenant": [r.tenant for r in ordered],
        "planned_output_tokens": np.fromiter((r.max_tokens for r in ordered), dtype=np.int64, count=len(ordered)),
    })
