"""GuideLLM's benchmark JSON, read from a file GuideLLM 0.8.1 wrote against `pdlab
serve configs/serve.yaml` (10 chat requests at a constant 4 req/s, 24 tokens each; the
server's run folder of that session beside it): its own per-request figures are ours,
and what it does not record is given as bounds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.runs.guidellm import spread
from experiments.runs.importbase import run_from_rows
from experiments.runs.imports import read_any
from experiments.runs.runformat import RunFormatError
from experiments.scoring.compare import added_latency
from experiments.scoring.metrics import score
from router.slo import SLO

DATA = Path(__file__).parent / "data"
GUIDELLM = DATA / "guidellm_benchmarks.json"


def _records() -> list[dict]:
    return json.loads(GUIDELLM.read_text())["benchmarks"][0]["requests"]["successful"]


def test_guidellms_own_per_request_figures_are_ours():
    run = read_any(GUIDELLM)
    table = score(run)[0].set_index("client_request_id")
    records = {r["request_id"]: r for r in _records()}
    assert sorted(table.index) == sorted(records)
    for rid, record in records.items():
        row = table.loc[rid]
        timings = record["info"]["timings"]
        assert row["ttft_s"] * 1e3 == pytest.approx(record["time_to_first_token_ms"], rel=1e-12)
        assert row["tpot_s"] * 1e3 == pytest.approx(record["inter_token_latency_ms"], rel=1e-12)
        assert row["e2e_s"] == pytest.approx(timings["last_token_iteration"] - timings["request_start"], rel=1e-12)
        assert (row["output_tokens"], row["prompt_tokens"]) == (record["output_tokens"], record["prompt_tokens"])
    assert set(run.requests["status"]) == {"finished"}


def test_guidellms_means_are_ours():
    metrics = json.loads(GUIDELLM.read_text())["benchmarks"][0]["metrics"]
    summary = score(read_any(GUIDELLM))[1]
    assert summary["ttft_s"]["mean"] * 1e3 == pytest.approx(metrics["time_to_first_token_ms"]["successful"]["mean"])
    assert summary["tbt_s"]["mean"] * 1e3 == pytest.approx(metrics["inter_token_latency_ms"]["successful"]["mean"])
    assert summary["output_tokens"] == metrics["output_token_count"]["successful"]["total_sum"]


def test_metrics_shows_the_unknown_token_times_as_bounds(pdlab, pdlab_json):
    found = pdlab_json(GUIDELLM, "--slo-v", "0.02")
    earliest, latest = found["bounds"]["earliest"], found["bounds"]["latest"]
    for exact in ("ttft_s", "tpot_s", "e2e_s"):
        assert earliest[exact] == found[exact] == latest[exact]
    assert earliest["idle_latency_s"]["mean"] <= found["idle_latency_s"]["mean"] < latest["idle_latency_s"]["mean"]
    assert earliest["smooth_goodput"] >= found["smooth_goodput"] > latest["smooth_goodput"]
    code, out, _ = pdlab("metrics", GUIDELLM)
    assert code == 0 and "tokens earliest" in out and "bounds, not measurements" in out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.lists(st.floats(0.0, 0.3), min_size=1, max_size=12)),
                min_size=1, max_size=6), st.floats(0.01, 0.2))
def test_true_idle_latency_lies_between_the_bounds(requests, v):
    rows = [{"request_id": i, "arrival_s": 0.0, "prompt_tokens": 1, "status": "finished",
             "token_times": list(first + np.cumsum(gaps))} for i, (first, gaps) in enumerate(requests)]
    run = run_from_rows(rows, "test")
    slo = SLO(v=v)
    idle = {how: score(spread(run, how), slo)[0]["idle_latency_s"].to_numpy() for how in ("earliest", "latest")}
    true = score(run, slo)[0]["idle_latency_s"].to_numpy()
    assert np.all(idle["earliest"] <= true + 1e-12) and np.all(true <= idle["latest"] + 1e-12)


def test_client_and_server_are_matched_by_guidellms_response_ids():
    added = added_latency(read_any(GUIDELLM), read_any(DATA / "guidellm_served"))
    assert added["matched"] == 10 and "server's ids" in added["by"]
    assert 0.0 <= added["ttft_s"]["p50"] < 0.05
    assert 0.0 <= added["e2e_s"]["p50"] < 0.05


def _write(tmp_path, result: dict) -> Path:
    path = tmp_path / "guidellm.json"
    path.write_text(json.dumps(result))
    return path


def test_an_errored_request_is_aborted_with_its_error(tmp_path):
    result = json.loads(GUIDELLM.read_text())
    record = result["benchmarks"][0]["requests"]["successful"].pop(0)
    record["info"]["timings"].update(first_token_iteration=None, last_token_iteration=None)
    record["info"]["error"] = "HTTPStatusError('400 Bad Request')"
    result["benchmarks"][0]["requests"]["errored"] = [record]
    run = read_any(_write(tmp_path, result))
    aborted = run.requests[run.requests["status"] == "aborted"]
    assert len(aborted) == 1 and aborted["output_tokens"].iloc[0] == 0
    assert "400" in aborted["error"].iloc[0]
    assert score(run)[0].set_index("status").loc["aborted", "idle_latency_s"] > 0


def test_a_file_with_several_benchmarks_asks_which(tmp_path, pdlab):
    result = json.loads(GUIDELLM.read_text())
    result["benchmarks"].append(result["benchmarks"][0])
    path = _write(tmp_path, result)
    with pytest.raises(RunFormatError, match=r"holds 2 benchmarks \(0: constant@4, 1: constant@4\).*--benchmark K"):
        read_any(path)
    assert len(read_any(path, 1).requests) == 10
    with pytest.raises(RunFormatError, match="--benchmark: expected 0 to 1"):
        read_any(path, 2)
    code, out, _ = pdlab("metrics", path, "--benchmark", "1")
    assert code == 0 and "tokens latest" in out


@pytest.mark.parametrize("key, value, message", [
    ("output_tokens", -2, r"request 0, key 'output_tokens': expected a whole number of tokens from 0 to 10,000,000, got -2"),
    ("first_token_iteration", "soon", r"request 0, key 'info.timings.first_token_iteration': expected a time"),
    ("request_start", None, r"request 0, key 'info.timings.request_start': expected a time in seconds")])
def test_a_bad_value_is_named(tmp_path, key, value, message):
    result = json.loads(GUIDELLM.read_text())
    record = result["benchmarks"][0]["requests"]["successful"][0]
    if key == "output_tokens":
        record[key] = value
    else:
        record["info"]["timings"][key] = value
        record["info"]["timings"]["resolve_start"] = None
    with pytest.raises(RunFormatError, match=message):
        read_any(_write(tmp_path, result))


def test_a_file_of_an_unknown_tool_gets_the_formats_read(tmp_path):
    path = _write(tmp_path, {"results": [1, 2, 3]})
    with pytest.raises(RunFormatError, match=r"not a format pdlab reads; it reads a run folder.*GuideLLM"):
        read_any(path)
    other = tmp_path / "bench.csv"
    other.write_text("a,b\n")
    with pytest.raises(RunFormatError, match="vllm bench serve"):
        read_any(other)
