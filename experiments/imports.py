"""Runs of other tools, turned into pdlab runs so smooth goodput can score them:
a plain JSONL of token timelines, and `vllm bench serve --save-detailed` results.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.runformat import STATUSES, Run, RunFormatError, read_run, validate


def _tables(rows: list[dict], source: str) -> Run:
    """`rows`: dicts with request_id, arrival_s, prompt_tokens, status and token_times (absolute s)."""
    counts = [len(r["token_times"]) for r in rows]
    requests = pd.DataFrame({
        "request_id": [r["request_id"] for r in rows],
        "arrival_s": [r["arrival_s"] for r in rows],
        "prompt_tokens": [r["prompt_tokens"] for r in rows],
        "output_tokens": counts,
        "status": [r["status"] for r in rows],
    })
    tokens = pd.DataFrame({
        "request_id": np.repeat(requests["request_id"].to_numpy(), counts),
        "index": np.concatenate([np.arange(1, c + 1) for c in counts]) if rows else np.empty(0, np.int64),
        "time_s": np.concatenate([np.asarray(r["token_times"], dtype=np.float64) for r in rows]) if rows else np.empty(0),
    })
    return validate(Run(requests, tokens, meta={"imported_from": source}))


def read_jsonl(path: str | Path) -> Run:
    """One JSON object per line: request_id, arrival_s, token_times (seconds on the
    arrival's clock); optional prompt_tokens (default 0) and status (default finished)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunFormatError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise RunFormatError(f"{where}: expected a JSON object")
        for key in ("request_id", "arrival_s", "token_times"):
            if key not in item:
                raise RunFormatError(f"{where}, key {key!r}: missing")
        times = item["token_times"]
        if not isinstance(times, list) or not all(_is_number(t) for t in times):
            raise RunFormatError(f"{where}, key 'token_times': expected a list of numbers (seconds)")
        if not _is_number(item["arrival_s"]):
            raise RunFormatError(f"{where}, key 'arrival_s': expected a number of seconds, got {item['arrival_s']!r}")
        status = item.get("status", "finished")
        if status not in STATUSES:
            raise RunFormatError(f"{where}, key 'status': expected one of {list(STATUSES)}, got {status!r}")
        rows.append({"request_id": item["request_id"], "arrival_s": item["arrival_s"], "token_times": times,
                     "prompt_tokens": item.get("prompt_tokens", 0), "status": status})
    return _tables(rows, f"jsonl:{path.name}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_any(path: str | Path) -> Run:
    """A run folder, a JSONL of timelines, or a vLLM bench result, by what `path` is."""
    path = Path(path)
    if path.is_dir():
        return read_run(path)
    if not path.exists():
        raise RunFormatError(f"{path}: no such run folder or file")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return read_vllm_bench(path)
    raise RunFormatError(f"{path}: expected a run folder, a .jsonl of timelines or a vllm bench .json result")
