"""The event log of a runtime, turned into the run format's tables at the end."""
from __future__ import annotations

from array import array

import numpy as np
import pandas as pd

from cluster.request import DECODING, FINAL, UNFINISHED

EVENT_KINDS = ("arrive", "dispatch", "prefill_end", "transfer_start", "transfer_end", "preempt", "resume",
               "migrate_start", "migrate_stage", "migrate_end", "migrate_abort", "finish", "abort", "reject", "fault")


class Recorder:
    def __init__(self) -> None:
        self.time, self.nbytes = array("d"), array("d")
        self.kind, self.request, self.instance, self.peer = array("b"), array("q"), array("q"), array("q")
        self.codes = {kind: code for code, kind in enumerate(EVENT_KINDS)}
        self.end_s = 0.0
        self.requests = pd.DataFrame()
        self.tokens = pd.DataFrame()

    def event(self, time: float, kind: str, request: int = -1, instance: int = -1, peer: int = -1,
              nbytes: float = 0.0) -> None:
        self.time.append(time)
        self.kind.append(self.codes[kind])
        self.request.append(request)
        self.instance.append(instance)
        self.peer.append(peer)
        self.nbytes.append(nbytes)

    def kinds(self) -> list[str]:
        return [EVENT_KINDS[code] for code in self.kind]

    def events(self) -> pd.DataFrame:
        kinds = pd.Categorical.from_codes(np.frombuffer(self.kind, dtype=np.int8), categories=EVENT_KINDS)
        return pd.DataFrame({"time_s": np.frombuffer(self.time), "kind": np.asarray(kinds).astype(str),
                             "request_id": np.frombuffer(self.request, dtype=np.int64),
                             "instance": np.frombuffer(self.instance, dtype=np.int64),
                             "peer": np.frombuffer(self.peer, dtype=np.int64),
                             "bytes": np.frombuffer(self.nbytes)})

    def close(self, end_s: float, requests, instances) -> None:
        """Settle every request's tokens up to `end_s` and build the tables."""
        self.end_s = end_s
        ordered = sorted(requests, key=lambda r: (r.arrival, r.id))
        for request in ordered:
            if request.state == DECODING:
                instance = instances[request.instance]
                done = instance.step - request.join_step
                if done:
                    request.decode_runs.append((instance.id, request.join_step, done))
                request.generated = request.join_generated + done
        times, counts = _token_times(ordered, instances)
        ids = np.fromiter((r.id for r in ordered), dtype=np.int64, count=len(ordered))
        self.requests = pd.DataFrame({
            "request_id": ids,
            "arrival_s": np.fromiter((r.arrival for r in ordered), dtype=np.float64, count=len(ordered)),
            "prompt_tokens": np.fromiter((r.prompt for r in ordered), dtype=np.int64, count=len(ordered)),
            "output_tokens": counts,
            "status": [r.state if r.state in FINAL else UNFINISHED for r in ordered],
            "tenant": [r.tenant for r in ordered],
            "planned_output_tokens": np.fromiter((r.target for r in ordered), dtype=np.int64, count=len(ordered)),
        })
        index = np.arange(1, len(times) + 1, dtype=np.int64)
        index -= np.repeat(np.cumsum(counts) - counts, counts)
        self.tokens = pd.DataFrame({"request_id": np.repeat(ids, counts), "index": index, "time_s": times},
                                   copy=False)


def _token_times(ordered, instances) -> tuple[np.ndarray, np.ndarray]:
    """Every request's token times in order: pieces (a prefill's token, a run of decode
    steps) are slices of one source array, sorted by (request, start) and gathered."""
    steps = [np.frombuffer(instance.step_end, dtype=np.float64) for instance in instances]
    base = np.concatenate([[0], np.cumsum([len(s) for s in steps])]).astype(np.int64)
    prefill = [t for r in ordered for t in r.prefill_times]
    source = np.concatenate(steps + [np.asarray(prefill, dtype=np.float64)])
    owner, start, length = array("q"), array("q"), array("q")
    next_prefill = int(base[-1])
    for position, request in enumerate(ordered):
        for _ in request.prefill_times:
            owner.append(position), start.append(next_prefill), length.append(1)
            next_prefill += 1
        for instance, first, count in request.decode_runs:
            owner.append(position), start.append(int(base[instance]) + first), length.append(count)
    owner, start, length = (np.frombuffer(a, dtype=np.int64) for a in (owner, start, length))
    order = np.lexsort((source[start] if len(start) else start, owner))
    owner, start, length = owner[order], start[order], length[order]
    total = int(length.sum())
    gather = np.arange(total, dtype=np.int64) + np.repeat(start - (np.cumsum(length) - length), length)
    counts = np.bincount(owner, weights=length, minlength=len(ordered)).astype(np.int64)
    return source[gather], counts
