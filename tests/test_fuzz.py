"""Corrupted inputs, generated: a run folder with one cell changed, JSONL timelines,
vLLM and GuideLLM results with one value changed. Each is either read and scored, or
refused with a `RunFormatError` that names where (table and column, line, key); never
another exception, and `pdlab metrics` never prints a traceback."""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.cli.main import main
from experiments.runs.imports import read_any
from experiments.runs.runformat import RunFormatError
from experiments.scoring.metrics import score
from tests.conftest import make_run

DATA = Path(__file__).parent / "data"
VALUES = st.one_of(st.none(), st.just(""), st.just("x"), st.just(float("nan")), st.just(float("inf")),
                   st.just(-1), st.just(-0.5), st.just(1.5), st.just(1e300), st.just(True), st.just("1e400"),
                   st.integers(-10, 10**12), st.floats(-1e6, 1e6, allow_nan=False), st.text(max_size=4))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(path: Path, where: tuple[str, ...]) -> None:
    """Read and score `path`, or refuse it naming one of `where`; the CLI agrees."""
    try:
        run = read_any(path)
        summary = score(run)[1]
        assert summary["requests"] == len(run.requests)
        refused = None
    except RunFormatError as exc:
        refused = str(exc)
        assert any(name in refused for name in where), refused
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["metrics", str(path), "--json"])
    assert "Traceback" not in err.getvalue()
    assert (code == 0) == (refused is None), err.getvalue()


@FUZZ
@given(table=st.sampled_from(["requests", "tokens"]), row=st.integers(0, 2), column=st.integers(0, 4), value=VALUES)
def test_a_run_folder_with_one_cell_changed(table, row, column, value):
    with tempfile.TemporaryDirectory() as folder:
        path = make_run(Path(folder) / "run", [[0.5, 0.6], [1.0]], arrivals=[0.0, 0.2])
        frame = pd.read_csv(path / f"{table}.csv")
        name = frame.columns[column % len(frame.columns)]
        frame[name] = frame[name].astype(object)
        frame.iloc[row % len(frame), frame.columns.get_loc(name)] = value
        frame.to_csv(path / f"{table}.csv", index=False)
        _outcome(path, (f"{table} row", f"{table}, column", "requests row", "tokens row"))


@FUZZ
@given(line=st.integers(0, 2), key=st.sampled_from(["request_id", "arrival_s", "token_times", "prompt_tokens",
                                                     "status"]), value=VALUES, cut=st.booleans())
def test_jsonl_timelines_with_one_value_changed(line, key, value, cut):
    rows = [{"request_id": i, "arrival_s": 0.1 * i, "token_times": [0.2 * i + 0.5, 0.2 * i + 0.6]} for i in range(3)]
    rows[line][key] = value if not (key == "token_times" and isinstance(value, (int, float))) else [value]
    text = "\n".join(json.dumps(r) for r in rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "timelines.jsonl"
        path.write_text(text[: len(text) // 2] if cut else text)
        _outcome(path, ("timelines.jsonl line", "tokens row", "requests row", "tokens, column"))


@FUZZ
@given(key=st.sampled_from(["ttfts", "itls", "output_lens", "input_lens", "errors", "start_times"]),
       request=st.integers(0, 2), value=VALUES)
def test_a_vllm_result_with_one_value_changed(key, request, value):
    result = json.loads((DATA / "vllm_bench_detailed.json").read_text())
    result[key][request % len(result[key])] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.json"
        path.write_text(json.dumps(result))
        _outcome(path, (f"key '{key}'", "tokens row", "requests row", "not valid JSON"))


@FUZZ
@given(key=st.sampled_from(["request_start", "first_token_iteration", "last_token_iteration", "output_tokens",
                            "prompt_tokens"]), request=st.integers(0, 9), value=VALUES)
def test_a_guidellm_result_with_one_value_changed(key, request, value):
    result = json.loads((DATA / "guidellm_benchmarks.json").read_text())
    record = result["benchmarks"][0]["requests"]["successful"][request]
    if key in ("output_tokens", "prompt_tokens"):
        record[key] = value
    else:
        record["info"]["timings"][key] = value
        record["info"]["timings"]["resolve_start"] = None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "guidellm.json"
        path.write_text(json.dumps(result))
        _outcome(path, (f"request {request}", "tokens row", "requests row", "not valid JSON"))

