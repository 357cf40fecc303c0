"""What the importers of other tools' results share: request rows with token
timelines made into a validated run, one JSON result read whole, and a number check."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.runs.runformat import Run, RunFormatError, validate


def run_from_rows(rows: list[dict], source: str) -> Run:
    """`rows`: dicts with request_id, arrival_s, prompt_tokens, status and token_times
    (absolute s); any other key becomes a column of the requests table."""
    counts = [len(r["token_times"]) for r in rows]
    columns = ["request_id", "arrival_s", "prompt_tokens", "status"]
    columns += [k for k in (rows[0] if rows else {}) if k not in columns and k != "token_times"]
    requests = pd.DataFrame({c: [r[c] for r in rows] for c in columns})
    requests.insert(3, "output_tokens", counts)
    tokens = pd.DataFrame({
        "request_id": np.repeat(requests["request_id"].to_numpy(), counts),
        "index": np.concatenate([np.arange(1, c + 1) for c in counts]) if rows else np.empty(0, np.int64),
        "time_s": np.concatenate([np.asarray(r["token_times"], dtype=np.float64) for r in rows]) if rows else np.empty(0),
    })
    return validate(Run(requests, tokens, meta={"imported_from": source}))


def load_single_json(path: Path) -> dict:
    text, decoder, results, at = path.read_text(), json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            item, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise RunFormatError(f"{path}: not valid JSON: {exc}") from None
        results.append(item)
    if len(results) != 1 or not isinstance(results[0], dict):
        raise RunFormatError(f"{path}: expected one JSON object, found {len(results)} results "
                             "(a vllm bench result written with --append-result?); keep one result per file")
    return results[0]


MAX_TOKENS = 10_000_000
"""More tokens than any model's context in one request: a corrupt count."""
TOKEN_COUNT = f"a whole number of tokens from 0 to {MAX_TOKENS:,}"


def is_token_count(value) -> bool:
    return is_number(value) and 0 <= value <= MAX_TOKENS and float(value).is_integer()


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
