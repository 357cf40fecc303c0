"""Every worked example of metrics.md, through `pdlab metrics`, to the printed digits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_run

FLUIDITY = [([0.5, .25, .25, .75, .25], 1.0), ([0.5, .25, .25, 1.0, .25], 0.6667),
            ([1.6, .25, .25], 0.4), ([0.5, .25, .25, .25, .25, .25, 1.0], 0.75)]


def per_request(pdlab, run, tmp_path, *flags):
    out = tmp_path / "per_request.csv"
    code, _, err = pdlab("metrics", run, "--per-request", out, "--json", *flags)
    assert code == 0, err
    return pd.read_csv(out)


def test_fluidity_index_examples(pdlab, tmp_path):
    run = make_run(tmp_path / "run", [list(np.cumsum(gaps)) for gaps, _ in FLUIDITY])
    table = per_request(pdlab, run, tmp_path, "--ttft", 1.0, "--tbt", 0.25)
    assert [round(x, 4) for x in table["fluidity_index"]] == [want for _, want in FLUIDITY]


def test_fluidity_floor_division_is_not_fooled_by_float_noise(pdlab, tmp_path):
    # first token 0.35 s against a 0.05 s deadline: (0.35-0.05)/0.1 is 2.9999999999999996 in floats; 1 + 3 misses
    run = make_run(tmp_path / "run", [[0.35]])
    table = per_request(pdlab, run, tmp_path, "--ttft", 0.05, "--tbt", 0.1)
    assert table["fluidity_index"][0] == pytest.approx(0.0)
    run = make_run(tmp_path / "run2", [[0.35, 0.45]])
    table = per_request(pdlab, run, tmp_path, "--ttft", 0.05, "--tbt", 0.1)
    assert table["fluidity_index"][0] == pytest.approx(1 - 4 / 5)


def test_andes_qoe_examples(pdlab, tmp_path):
    run = make_run(tmp_path / "run", [[1, 2, 3, 4], [3, 4, 5, 6], [1, 1.1, 5, 5.1]])
    table = per_request(pdlab, run, tmp_path, "--ttft", 1.0, "--slo-v", 1.0)
    assert [round(x, 4) for x in table["andes_qoe"]] == [1.0, 0.5, 0.75]


def test_percentiles_are_numpy_linear(pdlab_json, tmp_path):
    run = make_run(tmp_path / "run", [[t] for t in [10, 20, 30, 40, 1000]])
    ttft = pdlab_json(run)["ttft_s"]
    assert ttft["p90"] == pytest.approx(616.0) and ttft["p50"] == pytest.approx(30.0)


def test_distserve_attainment_and_request_goodput(pdlab_json, tmp_path):
    pairs = [(0.2, 0.05), (0.3, 0.04), (0.1, 0.12), (0.24, 0.09)]
    run = make_run(tmp_path / "run", [[ttft, ttft + tpot] for ttft, tpot in pairs], end_s=2.0)
    summary = pdlab_json(run, "--ttft", 0.25, "--tpot", 0.1)
    scheme = summary["schemes"]["ttft_tpot"]
    assert summary["serving_time_s"] == pytest.approx(2.0)
    assert scheme["slo_attainment"] == pytest.approx(0.5)
    assert scheme["request_goodput"] == pytest.approx(1.0)


def test_output_delay_trick(pdlab, tmp_path):
    run = make_run(tmp_path / "run", [[0.5, 0.6, 0.7, 1.2, 1.3]])
    flags = ("--ttft", 1.0, "--tbt", 0.1, "--slo-v", 0.1, "--delay-output", 0.1)
    code, out, err = pdlab("metrics", run, "--json", *flags)
    assert code == 0, err
    import json

    both = json.loads(out)
    plain, delayed = both["run"], both["output delayed"]
    assert plain["slo_attainment"] == 0.0 and delayed["slo_attainment"] == 1.0
    assert delayed["tbt_s"]["p99"] < plain["tbt_s"]["p99"]
    assert delayed["idle_latency_s"]["mean"] >= plain["idle_latency_s"]["mean"]


def test_output_delay_releases_the_printed_times(tmp_path):
    from experiments.runs.runformat import read_run
    from experiments.scoring.delay import delay_output

    run = read_run(make_run(tmp_path / "run", [[0.5, 0.6, 0.7, 1.2, 1.3]]))
    delayed = delay_output(run, 0.1)
    assert np.allclose(delayed.tokens["time_s"], [0.9, 1.0, 1.1, 1.2, 1.3])
