"""Workloads: arrival processes, length distributions, trace replay, tenants, and
the errors that bad `workload:` sections get."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.workloads.lengths import DATASETS, TRACES_DIR
from experiments.workloads.workload import COLUMNS, WorkloadConfig, generate, load_workload, tenant_slos

FIXED = {"dist": "fixed", "prompt": 100, "output": 10}
AZURE = pd.read_csv(TRACES_DIR / DATASETS["azure_conv"])
AZURE_S = (pd.to_datetime(AZURE["TIMESTAMP"]) - pd.to_datetime(AZURE["TIMESTAMP"]).iloc[0]).dt.total_seconds().to_numpy()


def workload(arrival=None, lengths=FIXED, seed=0, **top):
    data = dict(top)
    if arrival is not None:
        data.update(arrival=arrival, lengths=lengths)
    return generate(load_workload(data, "test.yaml"), seed)


def gaps(frame):
    return np.diff(frame["arrival_s"].to_numpy())


def test_frame_columns_types_and_order():
    frame = workload({"process": "poisson", "rate": 5}, requests=50)
    assert tuple(frame.columns) == COLUMNS
    assert [str(frame[c].dtype) for c in COLUMNS[:4]] == ["int64", "float64", "int64", "int64"]
    assert frame["request_id"].tolist() == list(range(50))
    assert frame["arrival_s"].iloc[0] == 0.0 and (gaps(frame) >= 0).all()
    assert set(frame["tenant"]) == {"default"}


def test_poisson_rate_and_cv():
    g = gaps(workload({"process": "poisson", "rate": 10}, requests=40_000))
    assert 1 / g.mean() == pytest.approx(10, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_rate_and_cv(cv):
    g = gaps(workload({"process": "gamma", "rate": 4, "cv": cv}, requests=100_000))
    assert 1 / g.mean() == pytest.approx(4, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.05)


def test_constant_rate_is_exact():
    g = gaps(workload({"process": "constant", "rate": 8}, requests=100))
    assert np.allclose(g, 0.125)


def test_duration_ends_arrivals_with_the_expected_count():
    frame = workload({"process": "poisson", "rate": 20}, duration_s=500)
    assert frame["arrival_s"].max() < 500
    assert len(frame) == pytest.approx(10_000, rel=0.05)
    assert len(workload({"process": "constant", "rate": 2}, duration_s=10)) == 20
    assert len(workload({"process": "poisson", "rate": 20}, duration_s=500, requests=300)) == 300


def test_trace_replay_keeps_gaps_divided_by_time_scale_and_the_rows_lengths():
    frame = workload({"process": "trace", "time_scale": 2.0}, {"dist": "same_trace"}, requests=500)
    assert np.allclose(gaps(frame), np.diff(AZURE_S[:500]) / 2)
    assert (frame["prompt_tokens"].to_numpy() == AZURE["ContextTokens"].to_numpy()[:500]).all()
    assert (frame["output_tokens"].to_numpy() == AZURE["GeneratedTokens"].to_numpy()[:500]).all()


def test_trace_start_limit_and_duration():
    frame = workload({"process": "trace", "start_s": 100, "limit": 50}, {"dist": "same_trace"}, requests=1000)
    first = int(np.searchsorted(AZURE_S, 100))
    assert len(frame) == 50
    assert np.allclose(frame["arrival_s"], AZURE_S[first:first + 50] - 100)
    assert (frame["prompt_tokens"].to_numpy() == AZURE["ContextTokens"].to_numpy()[first:first + 50]).all()
    whole = workload({"process": "trace"}, duration_s=60)
    assert len(whole) == (AZURE_S < 60).sum()


def test_trace_loop_repeats_rows_and_rate_scales_to_a_mean_rate():
    frame = workload({"process": "trace", "limit": 10, "loop": True}, {"dist": "same_trace"}, requests=35)
    assert len(frame) == 35 and (gaps(frame) > 0).all()
    prompts = frame["prompt_tokens"].to_numpy()
    assert (prompts[10:20] == prompts[:10]).all() and (prompts[30:] == prompts[:5]).all()
    fast = workload({"process": "trace", "rate": 50.0, "loop": True}, duration_s=2000)
    assert len(fast) / 2000 == pytest.approx(50, rel=0.02)


def test_dataset_draws_the_files_pairs():
    path = TRACES_DIR / DATASETS["arxiv"]
    table = pd.read_csv(path)
    pairs = set(zip(table["num_prefill_tokens"], table["num_decode_tokens"]))
    for name in ("arxiv", str(path)):
        frame = workload({"process": "poisson", "rate": 1}, {"dist": "dataset", "name": name}, requests=20_000)
        assert set(zip(frame["prompt_tokens"], frame["output_tokens"])) <= pairs
        assert frame["prompt_tokens"].mean() == pytest.approx(table["num_prefill_tokens"].mean(), rel=0.03)
    azure = workload({"process": "poisson", "rate": 1}, {"dist": "dataset", "name": "azure_conv"}, requests=2000)
    assert set(zip(azure["prompt_tokens"], azure["output_tokens"])) <= set(zip(AZURE["ContextTokens"],
                                                                               AZURE["GeneratedTokens"]))


@pytest.mark.parametrize("target", [1600, 3000])
def test_concat_long_prompts_average_about_the_target(target):
    frame = workload({"process": "poisson", "rate": 1}, {"dist": "concat_long", "target": target}, requests=20_000)
    assert frame["prompt_tokens"].mean() == pytest.approx(target, rel=0.05)
    sharegpt = pd.read_csv(TRACES_DIR / DATASETS["sharegpt"])
    assert set(frame["output_tokens"]) <= set(sharegpt["num_decode_tokens"])
    assert frame["prompt_tokens"].std() > 0


def test_uniform_lognormal_and_clipping():
    uniform = workload({"process": "poisson", "rate": 1}, {"dist": "uniform", "prompt": [10, 20], "output": [5, 5]},
                       requests=5000)
    assert set(uniform["prompt_tokens"]) == set(range(10, 21)) and set(uniform["output_tokens"]) == {5}
    lognormal = workload({"process": "poisson", "rate": 1}, {"dist": "lognormal", "prompt": {"mean": 800, "cv": 0.5},
                                                             "output": {"mean": 200, "cv": 1.0}}, requests=50_000)
    for column, mean, cv in (("prompt_tokens", 800, 0.5), ("output_tokens", 200, 1.0)):
        values = lognormal[column].to_numpy()
        assert values.mean() == pytest.approx(mean, rel=0.03)
        assert values.std() / values.mean() == pytest.approx(cv, rel=0.08)
    clipped = workload({"process": "poisson", "rate": 1}, {"dist": "dataset", "name": "sharegpt", "max_prompt": 1000,
                                                           "max_output": 300, "max_total": 1200}, requests=5000)
    prompt, output = clipped["prompt_tokens"].to_numpy(), clipped["output_tokens"].to_numpy()
    assert prompt.max() == 1000 and output.max() == 300 and (prompt + output).max() == 1200
    assert output.min() >= 1 and prompt.min() >= 1


def test_tenants_merge_in_time_order_with_their_shares():
    frame = workload(requests=8000, tenants=[
        {"name": "chat", "arrival": {"process": "poisson", "rate": 30}, "lengths": FIXED},
        {"name": "batch", "arrival": {"process": "gamma", "rate": 10, "cv": 2}, "lengths": FIXED}])
    assert len(frame) == 8000 and (gaps(frame) >= 0).all()
    assert (frame["tenant"] == "chat").mean() == pytest.approx(0.75, abs=0.03)


def test_ties_break_by_tenant_order_and_tenants_can_join_late():
    tied = workload(requests=6, tenants=[
        {"name": "a", "arrival": {"process": "constant", "rate": 1}, "lengths": FIXED},
        {"name": "b", "arrival": {"process": "constant", "rate": 1}, "lengths": FIXED}])
    assert tied["tenant"].tolist() == ["a", "b"] * 3 and tied["arrival_s"].tolist() == [0, 0, 1, 1, 2, 2]
    phased = workload(duration_s=30, tenants=[
        {"name": "base", "arrival": {"process": "constant", "rate": 1}, "lengths": FIXED},
        {"name": "burst", "arrival": {"process": "constant", "rate": 4}, "lengths": FIXED,
         "from_s": 10, "until_s": 20}])
    burst = phased.loc[phased["tenant"] == "burst", "arrival_s"]
    assert len(burst) == 40 and burst.min() == 10 and burst.max() < 20
    assert (phased["tenant"] == "base").sum() == 30


def test_rate_scale_speeds_every_tenant():
    spec = {"requests": 200, "tenants": [
        {"name": "a", "arrival": {"process": "poisson", "rate": 1}, "lengths": FIXED},
        {"name": "b", "arrival": {"process": "trace"}, "lengths": {"dist": "same_trace"}}]}
    slow = generate(load_workload(spec, "t"), 3)
    fast = generate(load_workload({**spec, "rate_scale": 4.0}, "t"), 3)
    assert np.allclose(fast["arrival_s"], slow["arrival_s"] / 4)
    assert (fast["tenant"] == slow["tenant"]).all()


def test_same_seed_same_frame_and_another_seed_differs():
    spec = {"requests": 1000, "tenants": [
        {"name": "a", "arrival": {"process": "gamma", "rate": 3, "cv": 2}, "lengths": {"dist": "concat_long"}},
        {"name": "b", "arrival": {"process": "poisson", "rate": 5}, "lengths": {"dist": "dataset", "name": "bwb"}}]}
    config = load_workload(spec, "t")
    pd.testing.assert_frame_equal(generate(config, 7), generate(load_workload(spec, "t"), 7))
    other = generate(config, 8)
    assert not np.array_equal(other["arrival_s"], generate(config, 7)["arrival_s"])
    assert not np.array_equal(other["prompt_tokens"], generate(config, 7)["prompt_tokens"])


def test_more_requests_extend_the_same_stream():
    spec = {"tenants": [
        {"name": "a", "arrival": {"process": "gamma", "rate": 3, "cv": 2}, "lengths": {"dist": "concat_long"}},
        {"name": "b", "arrival": {"process": "poisson", "rate": 5}, "lengths": {"dist": "lognormal",
         "prompt": {"mean": 100, "cv": 1}, "output": {"mean": 10, "cv": 1}}}]}
    short = generate(load_workload({**spec, "requests": 100}, "t"), 1)
    long = generate(load_workload({**spec, "requests": 300}, "t"), 1)
    pd.testing.assert_frame_equal(long.iloc[:100], short)


def test_a_rate_sweep_keeps_the_requests_and_scales_their_times():
    slow = workload({"process": "poisson", "rate": 2}, {"dist": "dataset", "name": "sharegpt"}, requests=300)
    fast = workload({"process": "poisson", "rate": 4}, {"dist": "dataset", "name": "sharegpt"}, requests=300)
    assert np.allclose(fast["arrival_s"] * 2, slow["arrival_s"])
    assert (fast["prompt_tokens"] == slow["prompt_tokens"]).all()


def test_adding_a_tenant_leaves_the_others_unchanged():
    one = [{"name": "a", "arrival": {"process": "poisson", "rate": 2}, "lengths": {"dist": "dataset", "name": "bwb"}}]
    two = one + [{"name": "b", "arrival": {"process": "poisson", "rate": 2}, "lengths": FIXED}]
    alone = workload(duration_s=100, tenants=one)
    together = workload(duration_s=100, tenants=two)
    mine = together[together["tenant"] == "a"].drop(columns="request_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone.drop(columns="request_id"))


def test_single_tenant_shorthand_is_a_tenant_named_default():
    short = load_workload({"requests": 50, "arrival": {"process": "poisson", "rate": 2}, "lengths": FIXED,
                           "slo": {"tbt": 0.05}}, "t")
    full = load_workload({"requests": 50, "tenants": [{"name": "default", "arrival": {"process": "poisson", "rate": 2},
                                                       "lengths": FIXED, "slo": {"tbt": 0.05}}]}, "t")
    assert short.tenants == full.tenants
    pd.testing.assert_frame_equal(generate(short, 0), generate(full, 0))
    again = WorkloadConfig.model_validate(short.model_dump())
    pd.testing.assert_frame_equal(generate(again, 0), generate(short, 0))


def test_tenant_slos():
    config = load_workload({"requests": 5, "tenants": [
        {"name": "a", "arrival": {"process": "poisson", "rate": 1}, "lengths": FIXED, "slo": {"tbt": 0.05, "f": "step"}},
        {"name": "b", "arrival": {"process": "poisson", "rate": 1}, "lengths": FIXED}]}, "t")
    assert tenant_slos(config) == {"a": {"tbt": 0.05, "f": "step"}, "b": {}}


def test_csv_files_relative_to_base_dir_and_unsorted_traces(tmp_path):
    pd.DataFrame({"arrival_s": [2.0, 0.5, 1.0], "prompt_tokens": [30, 10, 20], "output_tokens": [3, 1, 2]}).to_csv(
        tmp_path / "mine.csv", index=False)
    config = load_workload({"requests": 3, "arrival": {"process": "trace", "file": "mine.csv"},
                            "lengths": {"dist": "same_trace"}}, "t", base_dir=str(tmp_path))
    frame = generate(config, 0)
    assert frame["arrival_s"].tolist() == [0, 0.5, 1.5] and frame["prompt_tokens"].tolist() == [10, 20, 30]
    pd.DataFrame({"prompt_tokens": [5, -1], "output_tokens": [1, 1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv row 2, column 'prompt_tokens': expected a whole number"):
        load_workload({"requests": 3, "arrival": {"process": "poisson", "rate": 1},
                       "lengths": {"dist": "dataset", "name": str(tmp_path / "bad.csv")}}, "t")
    (tmp_path / "text.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,1\n0.5,12,2\nsoon,14,3\n")
    with pytest.raises(ValueError, match=r"text.csv row 3, column 'arrival_s': expected a time .* got 'soon'"):
        load_workload({"requests": 3, "arrival": {"process": "trace", "file": "text.csv"},
                       "lengths": {"dist": "same_trace"}}, "t", base_dir=str(tmp_path))


POISSON = {"process": "poisson", "rate": 1}
BAD = [
    ({"requests": 5, "arrival": POISSON, "lengths": FIXED, "rqeuests": 5}, r"workload\.rqeuests: unknown key; expected one of \['requests'"),
    ({"requests": 5, "tenants": [{"name": "a", "arrival": {"process": "poisson", "rate": -2}, "lengths": FIXED}]},
     r"workload\.tenants\.0\.arrival\.rate: Input should be greater than 0, got -2"),
    ({"requests": 5, "arrival": {"process": "bursty", "rate": 1}, "lengths": FIXED},
     r"workload\.arrival\.process: expected one of 'poisson', 'gamma', 'constant', 'trace', got 'bursty'"),
    ({"requests": 5, "arrival": POISSON, "lengths": {"dist": "dataset", "name": "shargpt"}},
     r"workload\.lengths\.name: expected one of \['arxiv', 'azure_conv', 'bwb', 'sharegpt'\] or a path"),
    ({"requests": 5, "arrival": POISSON, "lengths": FIXED, "slo": {"ttbt": 0.1}},
     r"workload\.slo\.ttbt: unknown SLO key; expected one of \['ttft', 'tbt'"),
    ({"requests": 5, "tenants": [{"name": "a", "arrival": POISSON, "lengths": FIXED, "slo": {"tbt": -1}}]},
     r"workload\.tenants\.0\.slo\.tbt: expected a number > 0, got -1"),
    ({"requests": 5, "arrival": POISSON, "lengths": {"dist": "same_trace"}},
     r"workload\.lengths: dist 'same_trace' .* needs arrival process 'trace'"),
    ({"arrival": POISSON, "lengths": FIXED}, r"workload\.requests: give requests \(a count\), duration_s"),
    ({"requests": 5}, r"workload\.arrival: missing"),
    ({"requests": 5, "arrival": POISSON, "lengths": {"dist": "uniform", "prompt": [9, 3], "output": [1, 1]}},
     r"workload\.lengths\.prompt: expected \[low, high\] with low <= high"),
    ({"requests": 5, "arrival": {"process": "trace", "time_scale": 2, "rate": 3}, "lengths": FIXED},
     r"workload\.arrival\.rate: give time_scale or rate, not both"),
    ({"requests": 5, "tenants": [{"name": "a", "arrival": POISSON, "lengths": FIXED}] * 2},
     r"workload\.tenants\.1\.name: duplicate tenant name 'a'"),
    ({"requests": 5, "arrival": {"process": "gamma", "rate": 1}, "lengths": FIXED}, r"workload\.arrival\.cv: missing"),
]


@pytest.mark.parametrize("data, message", BAD)
def test_bad_configs_name_the_file_and_key(data, message):
    with pytest.raises(ValueError, match=rf"^exp\.yaml: {message}"):
        load_workload(data, "exp.yaml")


def test_every_problem_gets_its_own_line():
    with pytest.raises(ValueError) as caught:
        load_workload({"requests": -1, "arrival": {"process": "poisson", "rate": 0}, "lengths": FIXED}, "exp.yaml")
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["workload.requests", "workload.arrival.rate"]


def test_a_million_requests_are_fast():
    config = load_workload({"requests": 1_000_000, "tenants": [
        {"name": "a", "arrival": {"process": "gamma", "rate": 50, "cv": 2}, "lengths": {"dist": "dataset", "name": "sharegpt"}},
        {"name": "b", "arrival": {"process": "trace", "loop": True}, "lengths": {"dist": "same_trace"}}]}, "t")
    start = time.perf_counter()
    frame = generate(config, 0)
    assert time.perf_counter() - start < 5
    assert len(frame) == 1_000_000 and frame["request_id"].iloc[-1] == 999_999


ARRIVALS = st.one_of(
    st.builds(lambda r: {"process": "poisson", "rate": r}, st.floats(0.1, 100)),
    st.builds(lambda r, cv: {"process": "gamma", "rate": r, "cv": cv}, st.floats(0.1, 100), st.floats(0.2, 4)),
    st.builds(lambda r: {"process": "constant", "rate": r}, st.floats(0.1, 100)),
)


@settings(max_examples=40, deadline=None)
@given(arrivals=st.lists(ARRIVALS, min_size=1, max_size=3), requests=st.none() | st.integers(1, 300),
       duration=st.none() | st.floats(0.5, 50), seed=st.integers(0, 2**32))
def test_any_workload_gives_a_well_formed_frame(arrivals, requests, duration, seed):
    if requests is None and duration is None:
        requests = 10
    tenants = [{"name": f"t{i}", "arrival": a, "lengths": {"dist": "uniform", "prompt": [1, 50], "output": [1, 9]}}
               for i, a in enumerate(arrivals)]
    frame = workload(requests=requests, duration_s=duration, tenants=tenants, seed=seed)
    assert frame["request_id"].tolist() == list(range(len(frame)))
    assert (gaps(frame) >= 0).all() and (frame["arrival_s"] >= 0).all()
    assert requests is None or len(frame) <= requests
    assert duration is None or (frame["arrival_s"] < duration).all()
    assert (frame["prompt_tokens"] >= 1).all() and (frame["output_tokens"] >= 1).all()
    if duration is None:
        assert len(frame) == requests


def test_every_yaml_example_in_the_doc_loads_and_generates():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "workloads.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 15
    for block in blocks:
        frame = generate(load_workload(yaml.safe_load(block)["workload"], "docs/workloads.md"), 0)
        assert len(frame) > 0
