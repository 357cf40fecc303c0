"""Runs of other tools, turned into pdlab runs so smooth goodput can score them:
a plain JSONL of token timelines, `vllm bench serve --save-detailed` results and
GuideLLM's benchmark JSON; `read_any` tells them apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cluster.core.tables import ABORTED, FINISHED, STATUSES
from experiments.runs.guidellm import guidellm_run
from experiments.runs.importbase import TOKEN_COUNT, is_number, is_token_count, load_single_json, run_from_rows
from experiments.runs.runformat import Run, RunFormatError, read_run


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
        if not isinstance(times, list) or not all(is_number(t) for t in times):
            raise RunFormatError(f"{where}, key 'token_times': expected a list of numbers (seconds)")
        if not is_number(item["arrival_s"]):
            raise RunFormatError(f"{where}, key 'arrival_s': expected a number of seconds, got {item['arrival_s']!r}")
        status = item.get("status", FINISHED)
        if status not in STATUSES:
            raise RunFormatError(f"{where}, key 'status': expected one of {list(STATUSES)}, got {status!r}")
        rows.append({"request_id": item["request_id"], "arrival_s": item["arrival_s"], "token_times": times,
                     "prompt_tokens": item.get("prompt_tokens", 0), "status": status})
    return run_from_rows(rows, f"jsonl:{path.name}")


def _chunk_times(ttft: float, itls: list, tokens: int) -> list[float]:
    """Times of `tokens` tokens from the first chunk's TTFT and the inter-chunk gaps.
    More chunks than tokens: the first ones carried none (the chat role message).
    Fewer: chunks carried several tokens each, as vLLM streams them (`--stream-interval
    N`: the first token alone, then N a chunk, the last chunk the rest); counts that no
    interval explains are split as evenly as possible."""
    chunks = ttft + np.concatenate([[0.0], np.cumsum(np.asarray(itls, dtype=np.float64))])
    if tokens <= len(chunks):
        return list(chunks[len(chunks) - tokens:])
    return list(np.repeat(chunks, chunk_sizes(tokens, len(chunks))))


def chunk_sizes(tokens: int, chunks: int) -> np.ndarray:
    """How many of `tokens` each of `chunks` carried (more tokens than chunks)."""
    if chunks > 1:
        every = -(-(tokens - 1) // (chunks - 1))
        if -(-(tokens - 1) // every) == chunks - 1:
            return np.array([1] + [every] * (chunks - 2) + [tokens - 1 - every * (chunks - 2)])
    return np.bincount((np.arange(tokens) * chunks) // tokens, minlength=chunks)


def read_vllm_bench(path: str | Path) -> Run:
    """A `vllm bench serve --save-result --save-detailed` result. Request i arrives at
    `start_times[i]` (vLLM >= 0.16), when its POST was sent, so TTFTs match vLLM's;
    older results have no send times and every request is placed at 0. A request
    with an error is `aborted` with no tokens."""
    path = Path(path)
    return vllm_bench_run(load_single_json(path), path)


def vllm_bench_run(result: dict, path: Path) -> Run:
    needed = ("ttfts", "itls", "output_lens", "input_lens", "errors")
    missing = [k for k in needed if k not in result]
    if missing:
        raise RunFormatError(f"{path}: keys {missing} missing; save the result with --save-result --save-detailed")
    count = len(result["ttfts"])
    for key in (*needed, "start_times"):
        if key in result and (not isinstance(result[key], list) or len(result[key]) != count):
            raise RunFormatError(f"{path}, key {key!r}: expected a list of {count} per-request values")
    starts = result.get("start_times")
    for i in range(count):
        _check_request(path, result, i, starts)
    origin = min(starts) if starts else 0.0
    rows = []
    for i in range(count):
        failed = bool(result["errors"][i])
        arrival = (starts[i] - origin) if starts else 0.0
        tokens = 0 if failed else int(result["output_lens"][i])
        times = [arrival + t for t in _chunk_times(result["ttfts"][i], result["itls"][i], tokens)] if tokens else []
        rows.append({"request_id": i, "arrival_s": arrival, "prompt_tokens": int(result["input_lens"][i]),
                     "status": ABORTED if failed else FINISHED, "token_times": times,
                     "error": str(result["errors"][i])})
    run = run_from_rows(rows, f"vllm-bench:{path.name}")
    run.meta.update({"arrivals": "start_times" if starts else "unknown (vLLM < 0.16): every request at 0",
                     "vllm_bench": {k: result.get(k) for k in ("date", "backend", "model_id", "num_prompts",
                                                                "request_rate", "burstiness", "max_concurrency",
                                                                "duration")}})
    if is_number(result.get("duration")):
        run.meta["bench_duration_s"] = float(result["duration"])
    if not starts and isinstance(result.get("duration"), (int, float)):
        run.meta["end_s"] = max(float(result["duration"]), float(run.tokens["time_s"].max()) if len(run.tokens) else 0.0)
    return run


def _check_request(path: Path, result: dict, i: int, starts: list | None) -> None:
    """Request `i`'s values are of their kind; an error names the key and the request."""
    def bad(key: str, expected: str, value) -> RunFormatError:
        return RunFormatError(f"{path}, key {key!r}, request {i}: expected {expected}, got {value!r}")

    for key in ("input_lens", "output_lens"):
        value = result[key][i]
        if not is_token_count(value):
            raise bad(key, TOKEN_COUNT, result[key][i])
    if starts is not None and not is_number(starts[i]):
        raise bad("start_times", "a number of seconds", starts[i])
    if result["errors"][i] or not result["output_lens"][i]:
        return
    if not (is_number(result["ttfts"][i]) and result["ttfts"][i] >= 0):
        raise bad("ttfts", "a number of seconds >= 0", result["ttfts"][i])
    itls = result["itls"][i]
    if not isinstance(itls, list) or not all(is_number(v) and v >= 0 for v in itls):
        raise bad("itls", "a list of numbers of seconds >= 0", itls)


FORMATS = ("a run folder (written by pdlab run, pdlab serve or pdlab import)",
           "a .jsonl of token timelines (one request a line: request_id, arrival_s, token_times)",
           "a `vllm bench serve --save-result --save-detailed` .json",
           "a GuideLLM benchmarks .json (`guidellm benchmark run ... --outputs json`, GuideLLM 0.8)")


def read_any(path: str | Path, benchmark: int | None = None) -> Run:
    """Any of the `FORMATS`, by what `path` is and holds; `benchmark`: which of a
    GuideLLM file's benchmarks (needed when it holds several)."""
    path = Path(path)
    if path.is_dir():
        return read_run(path)
    if not path.exists():
        raise RunFormatError(f"{path}: no such run folder or file")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        result = load_single_json(path)
        if "benchmarks" in result:
            return guidellm_run(result, path, benchmark)
        if "ttfts" in result or "mean_ttft_ms" in result:
            return vllm_bench_run(result, path)
    raise RunFormatError(f"{path}: not a format pdlab reads; it reads " + "; ".join(FORMATS))
