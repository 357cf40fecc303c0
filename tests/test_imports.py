"""Results of other tools: `vllm bench serve --save-detailed` JSON and plain JSONL timelines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.runs.imports import _chunk_times, read_jsonl, read_vllm_bench
from experiments.runs.runformat import RunFormatError, read_run
from experiments.scoring.metrics import score

DATA = Path(__file__).parent / "data"


def test_vllm_bench_result_becomes_a_run():
    run = read_vllm_bench(DATA / "vllm_bench_detailed.json")
    assert list(run.requests["request_id"]) == [0, 2, 1]              # ordered by send time
    assert list(run.requests["status"]) == ["finished", "finished", "aborted"]
    assert list(run.requests["output_tokens"]) == [8, 3, 0]
    table, summary = score(run)
    first = table.set_index("request_id")
    assert first.loc[0, "ttft_s"] == pytest.approx(0.0412)
    assert first.loc[0, "e2e_s"] == pytest.approx(0.1255)               # ttft + sum(itls), as vLLM's latency
    assert first.loc[2, "ttft_s"] == pytest.approx(0.05)
    assert summary["ttft_s"]["mean"] * 1000 == pytest.approx(45.6)    # vLLM's own mean TTFT
    assert first.loc[1, "idle_latency_s"] > 0                           # the failed request still waited
    assert run.requests.set_index("request_id").loc[1, "error"] == "Internal Server Error"


def test_chunks_carrying_several_tokens_share_the_chunk_time():
    # vLLM's --stream-interval 3: the first token alone, then three a chunk, the last the rest
    assert _chunk_times(1.0, [0.5, 0.5], 6) == [1.0, 1.5, 1.5, 1.5, 2.0, 2.0]
    # no interval gives 10 tokens in 5 chunks: split evenly
    assert _chunk_times(1.0, [0.5] * 4, 10) == [1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 3.0, 3.0]
    # chat backends send an empty role message first: more chunks than tokens
    assert _chunk_times(0.01, [0.5, 0.1, 0.1], 3) == pytest.approx([0.51, 0.61, 0.71])


def test_vllm_bench_without_detail_is_refused(tmp_path):
    plain = {k: v for k, v in json.loads((DATA / "vllm_bench_detailed.json").read_text()).items()
             if k not in ("itls", "ttfts")}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(plain))
    with pytest.raises(RunFormatError, match="--save-detailed"):
        read_vllm_bench(path)


def test_old_vllm_results_without_send_times(tmp_path):
    old = json.loads((DATA / "vllm_bench_detailed.json").read_text())
    del old["start_times"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    run = read_vllm_bench(path)
    assert (run.requests["arrival_s"] == 0).all() and run.end_s == pytest.approx(0.62)
    assert "unknown" in run.meta["arrivals"]


def test_jsonl_timelines(tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = [{"request_id": "a", "arrival_s": 10.0, "token_times": [10.5, 10.6, 10.6]},
             {"request_id": "b", "arrival_s": 11.0, "token_times": [], "status": "rejected"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table, _ = score(read_jsonl(path))
    assert table["ttft_s"].iloc[0] == pytest.approx(0.5)
    assert table["max_tbt_s"].iloc[0] == pytest.approx(0.1)
    assert not table["meets_smooth"].iloc[1]


@pytest.mark.parametrize("line,message", [
    ('{"request_id": 1, "arrival_s": 0}', r"line 1, key 'token_times': missing"),
    ('{"request_id": 1, "arrival_s": "x", "token_times": []}', r"line 1, key 'arrival_s'"),
    ('{"request_id": 1, "arrival_s": 0, "token_times": [0.1, "y"]}', r"line 1, key 'token_times'"),
    ('[1, 2]', r"line 1: expected a JSON object"),
    ('{"request_id": 1, "arrival_s": 0, "token_times": [], "status": "gone"}', r"line 1, key 'status'"),
])
def test_bad_jsonl_names_line_and_key(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(RunFormatError, match=message):
        read_jsonl(path)


def test_import_command_and_direct_scoring(pdlab, pdlab_json, tmp_path):
    source = DATA / "vllm_bench_detailed.json"
    code, out, err = pdlab("import", source, tmp_path / "run")
    assert code == 0, err
    assert score(read_run(tmp_path / "run"))[1] == score(read_vllm_bench(source))[1]
    assert pdlab_json(source)["requests"] == 3


@pytest.mark.parametrize("key, value, message", [
    ("ttfts", None, r"key 'ttfts', request 0: expected a number of seconds >= 0, got None"),
    ("ttfts", "0.04", r"key 'ttfts', request 0: expected a number of seconds >= 0, got '0.04'"),
    ("output_lens", -4, r"key 'output_lens', request 0: expected a whole number of tokens from 0 to 10,000,000, got -4"),
    ("output_lens", 4.7, r"key 'output_lens', request 0: expected a whole number of tokens from 0 to 10,000,000, got 4.7"),
    ("itls", [0.01, None], r"key 'itls', request 0: expected a list of numbers of seconds >= 0"),
    ("start_times", "soon", r"key 'start_times', request 0: expected a number of seconds")])
def test_a_bad_per_request_value_of_a_vllm_result_is_named(tmp_path, key, value, message):
    result = json.loads((DATA / "vllm_bench_detailed.json").read_text())
    result[key][0] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(result))
    with pytest.raises(RunFormatError, match=message):
        read_vllm_bench(path)
