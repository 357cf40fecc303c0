"""GuideLLM's benchmark JSON (0.8) as a pdlab run. GuideLLM keeps, per request, when
it was sent, its first and last token and the token counts, not each token's time:
the run spreads the tokens in between evenly (`spread="even"`), and `spread` rebuilds
it with them all at the first or at the last, the two ends of what the file allows.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from cluster.core.tables import ABORTED, FINISHED, UNFINISHED
from experiments.runs.importbase import TOKEN_COUNT, is_number, is_token_count, run_from_rows
from experiments.runs.runformat import Run, RunFormatError

GROUPS = {"successful": FINISHED, "errored": ABORTED, "incomplete": UNFINISHED}
SPREADS = ("even", "earliest", "latest")
SERVER_ID = re.compile(r"^(?:chatcmpl|cmpl)-(\d+)-[0-9a-f]{8}$")
KNOWN = "first and last token of each request (GuideLLM)"


def guidellm_run(result: dict, path: Path, benchmark: int | None = None) -> Run:
    """Benchmark `benchmark` of a loaded GuideLLM file (the only one when None)."""
    chosen = _benchmark(result, path, benchmark)
    where = f"{path}, benchmark {chosen}"
    found = result["benchmarks"][chosen]
    groups = found.get("requests")
    if not isinstance(groups, dict) or not any(isinstance(groups.get(g), list) for g in GROUPS):
        raise RunFormatError(f"{where}, key 'requests': expected lists {list(GROUPS)} of per-request records")
    records = [(record, status) for group, status in GROUPS.items() for record in groups.get(group) or []]
    origin = found.get("start_time")
    if not is_number(origin):
        starts = [_timing(r, "request_start") for r, _ in records]
        origin = min((s for s in starts if is_number(s)), default=0.0)
    rows = [_row(record, status, i, origin, f"{where}, request {i}") for i, (record, status) in enumerate(records)]
    run = run_from_rows(sorted(rows, key=lambda row: row["arrival_s"]), f"guidellm:{path.name}")
    run.meta.update({"token_times_known": KNOWN, "token_spread": "even",
                     "guidellm": {"version": result.get("metadata", {}).get("guidellm_version"),
                                  "benchmark": chosen, "strategy": _strategy(found)}})
    if is_number(found.get("duration")):
        run.meta["bench_duration_s"] = float(found["duration"])
    if is_number(found.get("end_time")):
        last = float(run.tokens["time_s"].max()) if len(run.tokens) else 0.0
        run.meta["end_s"] = max(float(found["end_time"]) - origin, last)
    return run


def _benchmark(result: dict, path: Path, benchmark: int | None) -> int:
    found = result["benchmarks"]
    if not isinstance(found, list) or not found:
        raise RunFormatError(f"{path}, key 'benchmarks': expected a list of GuideLLM benchmarks, got {found!r:.60}")
    if benchmark is None:
        if len(found) > 1:
            names = ", ".join(f"{i}: {_strategy(b)}" for i, b in enumerate(found))
            raise RunFormatError(f"{path}: holds {len(found)} benchmarks ({names}); choose one with --benchmark K")
        return 0
    if not 0 <= benchmark < len(found):
        raise RunFormatError(f"--benchmark: expected 0 to {len(found) - 1} for {path}, got {benchmark}")
    return benchmark


def _strategy(benchmark: dict) -> str:
    strategy = (benchmark.get("config") or {}).get("strategy") or {}
    rate = strategy.get("rate")
    return f"{strategy.get('type_', '?')}" + (f"@{rate:g}" if is_number(rate) else "")


def _timing(record: dict, key: str):
    return ((record.get("info") or {}).get("timings") or {}).get(key)


def _row(record: dict, status: str, i: int, origin: float, where: str) -> dict:
    start = _timing(record, "request_start")
    if start is None:
        start = _timing(record, "resolve_start")
    if not is_number(start):
        raise RunFormatError(f"{where}, key 'info.timings.request_start': expected a time in seconds, got {start!r}")
    first, last = _timing(record, "first_token_iteration"), _timing(record, "last_token_iteration")
    count = record.get("output_tokens")
    if count is None or first is None:
        count = 0
    if not is_token_count(count):
        raise RunFormatError(f"{where}, key 'output_tokens': expected {TOKEN_COUNT}, got {count!r}")
    for key, value in (("first_token_iteration", first), ("last_token_iteration", last)):
        if count and not is_number(value):
            raise RunFormatError(f"{where}, key 'info.timings.{key}': expected a time in seconds, got {value!r}")
    if count and not start <= first <= last:
        raise RunFormatError(f"{where}: expected request_start <= first_token_iteration <= last_token_iteration, "
                             f"got {start}, {first}, {last}")
    count = int(count)
    times = [first + (last - first) * k / (count - 1) for k in range(count)] if count > 1 else [first] * count
    prompt = record.get("prompt_tokens")
    if prompt is not None and not is_token_count(prompt):
        raise RunFormatError(f"{where}, key 'prompt_tokens': expected {TOKEN_COUNT}, got {prompt!r}")
    reply = SERVER_ID.match(str(record.get("response_id") or ""))
    return {"request_id": i, "arrival_s": start - origin, "token_times": [t - origin for t in times],
            "prompt_tokens": 0 if prompt is None else int(prompt), "status": status,
            "client_request_id": str(record.get("request_id", "")),
            "server_request_id": int(reply.group(1)) if reply else -1,
            "error": str((record.get("info") or {}).get("error") or "")}


def spread(run: Run, how: str) -> Run:
    """The run with each request's tokens between its first and last placed `how`:
    `earliest` (all at the first), `latest` (all at the last) or `even`."""
    if how not in SPREADS:
        raise ValueError(f"spread: expected one of {list(SPREADS)}, got {how!r}")
    tokens = run.tokens.sort_values(["request_id", "index"]).reset_index(drop=True)
    by = tokens.groupby("request_id")["time_s"]
    first, last = by.transform("min"), by.transform("max")
    count, position = by.transform("size"), tokens.groupby("request_id").cumcount()
    if how == "even":
        times = first + (last - first) * position / (count - 1).clip(lower=1)
    else:
        times = (first if how == "earliest" else last).where(position > 0, first).where(position < count - 1, last)
    return replace(run, tokens=tokens.assign(time_s=times.to_numpy()), meta=dict(run.meta, token_spread=how))
