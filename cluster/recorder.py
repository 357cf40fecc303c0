"""The event log of a runtime, turned into the run format's tables at the end."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.request import DECODING, FINAL, UNFINISHED, Request


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.end_s = 0.0
        self.requests = pd.DataFrame()
        self.tokens = pd.DataFrame()

    def event(self, time: float, kind: str, request: int = -1, instance: int = -1, peer: int = -1,
              nbytes: float = 0.0) -> None:
        self.rows.append((time, kind, request, instance, peer, nbytes))

    def events(self) -> pd.DataFrame:
        columns = ["time_s", "kind", "request_id", "instance", "peer", "bytes"]
        frame = pd.DataFrame(self.rows, columns=columns)
        return frame.astype({"time_s": "float64", "request_id": "int64", "instance": "int64", "peer": "int64",
                             "bytes": "float64"})

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
        step_ends = [np.frombuffer(instance.step_end, dtype=np.float64) for instance in instances]
        per_request = [_token_times(request, step_ends) for request in ordered]
        counts = np.array([len(t) for t in per_request], dtype=np.int64)
        self.requests = pd.DataFrame({
            "request_id": np.array([r.id for r in ordered], dtype=np.int64),
            "arrival_s": np.array([r.arrival for r in ordered], dtype=np.float64),
            "prompt_tokens": np.array([r.prompt for r in ordered], dtype=np.int64),
            "output_tokens": counts,
            "status": [r.state if r.state in FINAL else UNFINISHED for r in ordered],
            "tenant": [r.tenant for r in ordered],
            "planned_output_tokens": np.array([r.target for r in ordered], dtype=np.int64),
        })
        times = np.concatenate(per_request) if per_request else np.empty(0)
        owners = np.repeat(self.requests["request_id"].to_numpy(), counts)
        index = np.arange(1, len(times) + 1) - np.repeat(np.cumsum(counts) - counts, counts)
        self.tokens = pd.DataFrame({"request_id": owners, "index": index, "time_s": times})


def _token_times(request: Request, step_ends: list[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(request.prefill_times, dtype=np.float64)]
    for instance, first, count in request.decode_runs:
        parts.append(step_ends[instance][first:first + count])
    times = np.concatenate(parts)
    times.sort(kind="stable")
    return times
