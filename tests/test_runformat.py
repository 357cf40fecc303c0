"""The run format: round trips, CSV and Parquet, unsorted input, and bad input that
gets an error naming the table, row and column, with nothing half-written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from experiments.runs.runformat import Run, RunFormatError, read_run, write_run
from experiments.runs.synthetic import synthetic_run
from experiments.scoring.metrics import score
from tests.conftest import make_run


def test_parquet_round_trip_keeps_every_table(tmp_path):
    run = synthetic_run(requests=50, seed=3)
    again = read_run(write_run(run, tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "events.parquet", "requests.parquet", "run.json", "tokens.parquet"]
    pd.testing.assert_frame_equal(again.requests, run.requests, check_dtype=False)
    assert again.meta["end_s"] == run.meta["end_s"]
    assert len(again.tokens) == len(run.tokens)


def test_csv_and_parquet_score_alike(tmp_path):
    streams = [[0.5, 0.7, 0.9], [1.0, 1.5], []]
    a = read_run(make_run(tmp_path / "csv", streams, fmt="csv", arrivals=[0, 0.2, 0.4]))
    b = read_run(make_run(tmp_path / "pq", streams, fmt="parquet", arrivals=[0, 0.2, 0.4]))
    assert score(a)[1] == score(b)[1]


def test_unsorted_tokens_give_the_same_metrics(tmp_path):
    run = synthetic_run(requests=80, seed=5)
    shuffled = Run(run.requests.sample(frac=1, random_state=1), run.tokens.sample(frac=1, random_state=2),
                   meta=run.meta)
    plain, mixed = score(read_run(write_run(run, tmp_path / "a"))), score(read_run(write_run(shuffled, tmp_path / "b")))
    assert plain[1] == mixed[1]
    pd.testing.assert_frame_equal(plain[0].sort_values("request_id").reset_index(drop=True),
                                  mixed[0].sort_values("request_id").reset_index(drop=True))


def test_string_request_ids(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame({"request_id": ["a", "b"], "arrival_s": [0.0, 1.0], "prompt_tokens": [3, 4],
                  "output_tokens": [1, 2], "status": ["finished", "finished"]}).to_csv(folder / "requests.csv", index=False)
    pd.DataFrame({"request_id": ["b", "a", "b"], "index": [2, 1, 1], "time_s": [1.5, 0.4, 1.2]}).to_csv(
        folder / "tokens.csv", index=False)
    table, _ = score(read_run(folder))
    assert list(table["ttft_s"]) == pytest.approx([0.4, 0.2])


def _broken(tmp_path, table, mutate):
    folder = make_run(tmp_path / "run", [[0.5, 0.6], [1.0]], arrivals=[0.0, 0.2])
    path = folder / f"{table}.csv"
    frame = pd.read_csv(path)
    frame = mutate(frame)
    frame.to_csv(path, index=False)
    return folder


BAD = [
    ("requests", lambda f: f.drop(columns=["arrival_s"]), r"requests, column 'arrival_s': missing"),
    ("requests", lambda f: f.assign(arrival_s=["zero", "0.2"]), r"requests row 1, column 'arrival_s': expected a number"),
    ("requests", lambda f: f.assign(status=["finished", "done"]), r"requests row 2, column 'status': expected one of"),
    ("requests", lambda f: f.assign(prompt_tokens=[1.5, 2]), r"requests row 1, column 'prompt_tokens': expected a whole"),
    ("requests", lambda f: f.assign(request_id=[0, 0]), r"requests row 2, column 'request_id': duplicate"),
    ("tokens", lambda f: f.assign(time_s=[0.5, np.nan, 1.0]), r"tokens row 2, column 'time_s': missing value"),
    ("tokens", lambda f: f.assign(index=[1, 1, 1]), r"tokens row 2, column 'index': duplicate index 1"),
    ("tokens", lambda f: f.assign(index=[1, 3, 1]), r"tokens row 2, column 'index': out of sequence index 3"),
    ("tokens", lambda f: f.assign(time_s=[0.5, 0.6, 0.1]), r"tokens row 3, column 'time_s': .* before its request 1 arrived"),
    ("tokens", lambda f: f.assign(time_s=[0.6, 0.5, 1.0]), r"tokens row 2, column 'time_s': token 2 .* before token 1"),
    ("tokens", lambda f: f.assign(request_id=[0, 0, 7]), r"tokens row 3, column 'request_id': id 7 is not in requests"),
    ("tokens", lambda f: f.iloc[:2], r"requests row 2, column 'output_tokens': says 1 but tokens has 0 rows"),
]


@pytest.mark.parametrize("table,mutate,message", BAD)
def test_bad_input_names_table_row_and_column(tmp_path, pdlab, table, mutate, message):
    folder = _broken(tmp_path, table, mutate)
    with pytest.raises(RunFormatError, match=message):
        read_run(folder)
    out = tmp_path / "out" / "per_request.csv"
    code, stdout, err = pdlab("metrics", folder, "--per-request", out)
    assert code == 2 and "Traceback" not in err and err.startswith("pdlab metrics: error:")
    assert not out.exists()


def test_write_run_leaves_nothing_half_written(tmp_path):
    run = synthetic_run(requests=10, seed=1)
    bad = Run(run.requests.assign(status="lost"), run.tokens, meta=run.meta)
    with pytest.raises(RunFormatError):
        write_run(bad, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_bad_run_json(tmp_path):
    folder = make_run(tmp_path / "run", [[0.5]])
    (folder / "run.json").write_text(json.dumps({"end_s": "late"}))
    with pytest.raises(RunFormatError, match="run.json, key 'end_s'"):
        read_run(folder)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="run.json: not valid JSON"):
        read_run(folder)


def test_missing_folder_and_table(tmp_path, pdlab):
    code, _, err = pdlab("metrics", tmp_path / "nowhere")
    assert code == 2 and "no such run folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = pdlab("metrics", tmp_path / "empty")
    assert code == 2 and "no requests.parquet or requests.csv" in err


def test_chunked_writing_equals_writing_whole(tmp_path):
    from experiments.config.experiment import ExperimentConfig
    from experiments.runs.runformat import write_run_chunked
    from experiments.runs.runner import _simulate

    config = ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}]},
        "workload": {"requests": 60, "arrival": {"process": "poisson", "rate": 4.0},
                     "lengths": {"dist": "uniform", "prompt": [10, 300], "output": [1, 80]}}})
    record, meta, _ = _simulate(config)
    whole = read_run(write_run(Run(record.requests, record.tokens, record.events(), meta), tmp_path / "whole"))
    chunks = list(record.token_chunks(500))
    assert len(chunks) > 3 and all(len(frame) <= 500 or last - first == 1 for first, last, frame in chunks)
    parts = read_run(write_run_chunked(Run(record.requests, record.tokens.iloc[:0], record.events(), meta),
                                       record.token_chunks(500), tmp_path / "parts"))
    pd.testing.assert_frame_equal(whole.tokens, parts.tokens)
    pd.testing.assert_frame_equal(whole.requests, parts.requests)
    assert score(whole)[1] == score(parts)[1]


def test_the_run_format_vocabulary_is_defined_once_and_documented():
    from dataclasses import fields
    from pathlib import Path

    from cluster.core.recorder import Recorder
    from cluster.core.tables import EVENT_KINDS, STEP_COLUMNS, STEP_SHAPE
    from cluster.engines.port import StepShape

    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-format.md").read_text()
    assert all(f"| `{kind}` |" in doc for kind in EVENT_KINDS)
    assert tuple(f.name for f in fields(StepShape)) == STEP_SHAPE
    assert list(STEP_COLUMNS)[-len(STEP_SHAPE):] == list(STEP_SHAPE)
    with pytest.raises(KeyError):
        Recorder().event(0.0, "teleport")
