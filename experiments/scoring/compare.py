"""Two measurements of one set of requests side by side: what a client measured (a
`vllm bench serve` result, a GuideLLM benchmark, a JSONL of timelines) and what the
server recorded (a `pdlab serve` run folder), matched request by request where one
kept the other's ids: the server keeps the client's (`client_request_id`, from the
`x-request-id` header, whose trailing number is the client's request index, as `vllm
bench serve` sends it), GuideLLM keeps the server's response id, which names it."""
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
    """Pairs (client_id, server_id) of the same request: by the server's id the client
    kept (GuideLLM keeps the response id), else by the client's id the server kept (the
    `x-request-id` header); empty when neither kept the other's."""
    if "server_request_id" in client.requests:
        kept = client.requests[client.requests["server_request_id"] >= 0]
        pairs = pd.DataFrame({"client_id": kept["request_id"].to_numpy(),
                              "server_id": kept["server_request_id"].to_numpy()})
        return pairs[pairs["server_id"].isin(server.requests["request_id"])].drop_duplicates("server_id")
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
    found = {"matched": int(len(pairs)), "by": ("the server's ids the client kept" if "server_request_id" in
                                               client.requests else "the client's ids the server kept")}
    for column in ("ttft_s", "e2e_s"):
        gap = ours[column].loc[pairs["client_id"]].to_numpy() - theirs[column].loc[pairs["server_id"]].to_numpy()
        found[column] = ({stat: float(f(gap)) for stat, f in (("mean", np.mean), ("p50", np.median),
                                                             ("p99", lambda g: np.percentile(g, 99)))}
                         if len(gap) else None)
    return found
