"""`pdlab metrics` and `pdlab quickstart` as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_run

REQUIRED_SUMMARY = ("smooth_goodput", "serving_time_s", "throughput_tokens_per_s", "token_goodput",
                    "request_goodput", "slo_attainment")
REQUIRED_COLUMNS = ("request_id", "idle_latency_s", "benefit", "meets_slo", "fluidity_index", "andes_qoe")


@pytest.fixture
def run(tmp_path):
    # request 0 smooth; request 1 stalls 2 s after its third token; request 2 never finishes
    streams = [[0.3, 0.35, 0.4, 0.45], [0.5, 0.55, 0.6, 2.6, 2.65], [1.0]]
    return make_run(tmp_path / "run", streams, arrivals=[0.0, 0.1, 0.2], statuses=["finished", "finished", "unfinished"],
                    end_s=4.0)


def test_json_summary_and_per_request_table(pdlab, run, tmp_path):
    out = tmp_path / "table.csv"
    code, stdout, err = pdlab("metrics", run, "--json", "--per-request", out)
    assert code == 0, err
    summary = json.loads(stdout)
    assert all(key in summary for key in REQUIRED_SUMMARY)
    table = pd.read_csv(out)
    assert all(column in table.columns for column in REQUIRED_COLUMNS)
    assert summary["serving_time_s"] == pytest.approx(4.0)            # first arrival to end_s
    assert summary["slo_attainment"] == pytest.approx(1 / 3)          # only request 0 meets TTFT 1 / TBT 0.1
    assert summary["token_goodput"] == pytest.approx(4 / 4.0)
    assert summary["throughput_tokens_per_s"] == pytest.approx(10 / 4.0)
    assert list(table["meets_slo"]) == [True, False, False]
    # request 1: token 4 at 2.5 s after arrival vs 0.4 s of reading -> idle 2.1 s
    assert table["idle_latency_s"][1] == pytest.approx(2.5 - 0.4)
    # request 2 waits from its arrival at 0.2 until 4.0 for its 2nd token: 3.8 - 0.2 = 3.6 s
    assert table["idle_latency_s"][2] == pytest.approx(3.6)
    assert summary["smooth_goodput"] == pytest.approx(sum(table["benefit"]) / 4.0)


def test_every_slo_parameter_is_settable(pdlab_json, run):
    summary = pdlab_json(run, "--slo-v", 0.5, "--slo-l", 3, "--alpha", 1, "--f", "step", "--ttft", 2,
                         "--tbt", 2.5, "--tpot", 0.6, "--e2e", 3, "--l-max", 4)
    p = summary["parameters"]
    assert (p["v"], p["l"], p["alpha"], p["f"], p["ttft"], p["tbt"], p["tpot"], p["e2e"], p["l_max"]) == \
        (0.5, 3, 1, "step", 2, 2.5, 0.6, 3, 4)
    assert summary["slo_attainment"] == pytest.approx(2 / 3)          # TBT 2.5 forgives the stall
    assert summary["schemes"]["smooth"]["token_goodput"] == pytest.approx(summary["smooth_goodput"])


def test_windows_cut_by_arrival(pdlab_json, run):
    summary = pdlab_json(run, "--warmup", 0.05)
    assert summary["requests"] == 2 and summary["parameters"]["excluded_by_window"] == 1


def test_readable_table_and_bad_flags(pdlab, run):
    code, out, _ = pdlab("metrics", run, "--delay-output", 0.1)
    assert code == 0 and "smooth goodput" in out and "output delayed" in out
    code, _, err = pdlab("metrics", run, "--f", "cubic")
    assert code == 2 and "slo.f" in err and "Traceback" not in err
    code, _, err = pdlab("metrics", run, "--slo-v", 0)
    assert code == 2 and "slo.v" in err


def test_run_json_slo_section_sets_defaults(pdlab_json, run):
    (run / "run.json").write_text(json.dumps({"end_s": 4.0, "slo": {"tbt": 3.0}}))
    assert pdlab_json(run)["slo_attainment"] == pytest.approx(2 / 3)
    assert pdlab_json(run, "--tbt", 0.1)["slo_attainment"] == pytest.approx(1 / 3)


def test_layouts_compare_colocated_chunked_and_disaggregated(tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "layouts.yaml"
    done = subprocess.run([sys.executable, "-m", "experiments.cli.main", "run", str(config), "--out", str(tmp_path / "l")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summaries = {}
    for variant in ("colocated", "chunked", "disaggregated"):
        run = tmp_path / "l" / variant
        assert (run / "tokens.parquet").exists() and (run / "run.json").exists(), variant
        summaries[variant] = json.loads(subprocess.run(
            [sys.executable, "-m", "experiments.cli.main", "metrics", str(run), "--json"],
            capture_output=True, text=True, check=True).stdout)
    colocated, chunked, disaggregated = (summaries[k] for k in ("colocated", "chunked", "disaggregated"))
    assert chunked["tbt_s"]["p99"] < colocated["tbt_s"]["p99"]
    assert disaggregated["slo_attainment"] > colocated["slo_attainment"]
    assert colocated["requests"] == chunked["requests"] == disaggregated["requests"]


def test_quickstart_sweeps_the_simulator_then_runs_every_policy_live(tmp_path):
    out = tmp_path / "qs"
    done = subprocess.run([sys.executable, "-m", "experiments.cli.main", "quickstart", "--out", str(out),
                           "--set", "workload.requests=40"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    policies = ["least_loaded", "classic_goodput", "andes", "smooth_goodput"]
    swept = pd.read_csv(out / "simulated" / "results.csv")
    assert list(dict.fromkeys(swept["policy"])) == policies
    assert sorted(swept["rate"].unique()) == [4, 6, 8, 10] and sorted(swept["seed"].unique()) == [0, 1, 2]
    assert "attributed_harmful_per_1k" in swept and (out / "simulated" / "plots" / "harm.png").exists()
    live = pd.read_csv(out / "live" / "results.csv")
    assert list(live["policy"]) == policies and (live["finished"] == 40).all()
    assert (out / "live" / "report.md").exists() and list((out / "live" / "plots").glob("timelines_*.png"))
    for policy in policies:
        run = json.loads(next((out / "live" / "runs").glob(f"*/{policy}/*/*/run.json")).read_text())
        assert run["runtime"] == "ray" and run["report_lag_s"]["p99"] > 0
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 80                       # readable in an 80-column terminal
    assert sum(line.strip().startswith(tuple(policies)) for line in lines) == 8   # both tables, every policy
