"""Two measurements of one set of requests side by side: what a client measured (a
`vllm bench serve` result, a JSONL of timelines) and what the server recorded (a
`pdlab serve` run folder), matched request by request where the server kept the
client's request ids (`client_request_id`, from the `x-request-id` header, whose
trailing number is the client's request index, as `vllm bench serve` sends it)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.runs.runformat import Run


def label(run: Run) -> str:
    if "served" in run.meta:
        return "server"
    return "client" if "imported_from" in run.meta else "run"


def latencies(run: Run) -> pd.DataFrame:
    """Each request's TTFT and E2E (first and last token after its arrival), by request id."""
    tokens = run.tokens.groupby("request_id")["time_s"].agg(["min", "max"])
    arrival = run.requests.set_index("request_id")["arrival_s"]
    frame = tokens.join(arrival, how="inner")
    return pd.DataFrame({"ttft_s": frame["min"] - frame["arrival_s"], "e2e_s": frame["max"] - frame["arrival_s"]})


def match(client: Run, server: Run) -> pd.DataFrame:
    """Pairs (client_id, server_id) of the same request; empty when the server kept no ids."""
    if "client_request_id" not in server.requests:
        return pd.DataFrame({"client_id": [], "server_id": []}, dtype="int64")
    index = server.requests["client_request_id"].astype(str).str.extract(r"(\d+)$")[0]
    keep = index.notna()
    pairs = pd.DataFrame({"client_id": index[keep].astype("int64").to_numpy(),
                          "server_id": server.requests["request_id"][keep].to_numpy()})
    return pairs[pairs["client_id"].isin(client.requests["request_id"])].drop_duplicates("client_id")


def added_latency(client: Run, server: Run) -> dict:
    """What the path between server and client added (client minus server), per matched
    request: TTFT and E2E, mean, p50 and p99 in seconds; and how many matched."""
    pairs = match(client, server)
    ours, theirs = latencies(client), latencies(server)
    pairs = pairs[pairs["client_id"].isin(ours.index) & pairs["server_id"].isin(theirs.index)]
    found = {"matched": int(len(pairs))}
    for column in ("ttft_s", "e2e_s"):
        gap = ours[column].loc[pairs["client_id"]].to_numpy() - theirs[column].loc[pairs["server_id"]].to_numpy()
        found[column] = ({stat: float(f(gap)) for stat, f in (("mean", np.mean), ("p50", np.median),
                                                             ("p99", lambda g: np.percentile(g, 99)))}
                         if len(gap) else None)
    return found
