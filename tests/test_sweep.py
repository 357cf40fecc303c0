"""`pdlab sweep`: the sweep file format, the results table, plots and report.md."""
from __future__ import annotations

import argparse

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.cli.sweep import add_parser
from experiments.runs.runformat import Run, read_run, validate
from experiments.scoring.metrics import score
from experiments.sweeps.report import reading
from experiments.sweeps.rows import EVENT_COUNTS, headline, parked
from experiments.sweeps.spec import load_sweep
from router.slo import SCHEMES

BASE = {
    "name": "tiny",
    "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                "instances": [{"role": "prefill"}, {"role": "decode"}]},
    "workload": {"requests": 50, "arrival": {"process": "poisson", "rate": 1.0},
                 "lengths": {"dist": "uniform", "prompt": [64, 512], "output": [8, 64]}},
    "slo": {"ttft": 1.0, "tbt": 0.1, "v": 0.1, "l": 1.0, "alpha": 5},
}
SWEEP = {
    "base": BASE,
    "sweep": {"rates": [5, 40],
              "policies": ["round_robin", {"name": "round_robin", "label": "rr-again"}],
              "clusters": {"colocated": ["cluster.instances=[{role: colocated, count: 2}]"], "split": []}},
}
ROW_COLUMNS = ("cluster", "policy", "rate", "seed", "throughput_tokens_per_s", "smooth_goodput",
               "ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "tpot_p99_s", "idle_latency_mean_s", "idle_latency_p99_s",
               "rejected", *EVENT_COUNTS,
               *(f"{s}_{m}" for s in SCHEMES for m in ("attainment", "token_goodput", "request_goodput")))
RATE_PLOTS = ("classic_goodput", "smooth_goodput", "attainment", "throughput", "ttft_p99", "tbt_p99", "counts", "harm")


def write(folder, data, name="sweep.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def sweep_command(capsys, *args):
    top = argparse.ArgumentParser(prog="pdlab")
    add_parser(top.add_subparsers(dest="command", required=True))
    parsed = top.parse_args(["sweep", *map(str, args)])
    code = parsed.handler(parsed)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write(folder, SWEEP)
    top = argparse.ArgumentParser(prog="pdlab")
    add_parser(top.add_subparsers(dest="command", required=True))
    parsed = top.parse_args(["sweep", str(path), "--out", str(folder / "out")])
    assert parsed.handler(parsed) == 0
    return path, folder / "out"


def test_one_row_per_point_with_the_headline_columns(swept):
    _, out = swept
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 2 * 2 * 2
    assert set(ROW_COLUMNS) <= set(table.columns)
    assert not table.duplicated(["cluster", "policy", "rate", "seed"]).any()
    assert set(table["policy"]) == {"round_robin", "rr-again"} and set(table["rate"]) == {5.0, 40.0}
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table, check_dtype=False)
    assert (table["requests"] == 50).all()
    same = table.set_index(["cluster", "rate"])
    pd.testing.assert_frame_equal(same[same["policy"] == "round_robin"].drop(columns="policy"),
                                  same[same["policy"] == "rr-again"].drop(columns="policy"))


def test_rate_is_applied_and_runs_are_kept_by_point(swept):
    _, out = swept
    run = read_run(out / "runs" / "split" / "round_robin" / "rate=40" / "seed=0")
    slow = read_run(out / "runs" / "split" / "round_robin" / "rate=5" / "seed=0")
    assert run.meta["config"]["workload"]["tenants"][0]["arrival"]["rate"] == 40
    assert run.requests["arrival_s"].max() == pytest.approx(slow.requests["arrival_s"].max() / 8)
    colocated = read_run(out / "runs" / "colocated" / "rr-again" / "rate=5" / "seed=0")
    assert [g["role"] for g in colocated.meta["config"]["cluster"]["instances"]] == ["colocated"]


def test_plots_and_report_exist(swept):
    _, out = swept
    for name in (*RATE_PLOTS, "timelines_colocated", "timelines_split"):
        for suffix in (".png", ".svg"):
            assert (out / "plots" / f"{name}{suffix}").stat().st_size > 0
    report = (out / "report.md").read_text()
    for name in (*RATE_PLOTS, "timelines_split"):
        assert f"(plots/{name}.png)" in report
    assert "| colocated | rr-again | 40 | 0 |" in report
    assert "`split`, rate 40: classic goodput highest with round_robin = rr-again" in report


def test_same_table_with_two_jobs_and_no_runs(swept, capsys, tmp_path):
    path, out = swept
    code, _, err = sweep_command(capsys, path, "--out", tmp_path / "two", "--jobs", 2, "--no-runs")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / "results.parquet"),
                                  pd.read_parquet(out / "results.parquet"))
    assert not (tmp_path / "two" / "runs").exists()
    assert (tmp_path / "two" / "plots" / "timelines_split.png").exists()


def test_a_sweep_into_an_existing_folder_replaces_it_whole(swept, capsys, tmp_path):
    path, _ = swept
    old = tmp_path / "again"
    (old / "runs" / "stale-point").mkdir(parents=True)
    (old / "results.csv").write_text("old\n")
    code, _, err = sweep_command(capsys, path, "--out", old, "--no-runs")
    assert code == 0, err
    assert not (old / "runs").exists() and (old / "results.csv").read_text() != "old\n"
    assert not (tmp_path / "again.partial").exists()


@pytest.mark.parametrize("change, named", [
    ({"sweep": {**SWEEP["sweep"], "ratez": [1]}}, "sweep.yaml: sweep.ratez: unknown key; expected one of ['rates',"),
    ({"sweep": {**SWEEP["sweep"], "rates": [1, -2]}}, "sweep.yaml: sweep.rates.1: Input should be greater than 0"),
    ({"sweep": {**SWEEP["sweep"], "policies": ["round_robin", "nope"]}},
     "sweep.yaml: sweep.policies.1.name: unknown policy"),
    ({"sweep": {**SWEEP["sweep"], "policies": ["round_robin", "round_robin"]}},
     "sweep.yaml: sweep.policies: entry 1: duplicate policy label 'round_robin'"),
    ({"sweep": {**SWEEP["sweep"], "policies": [{"name": "round_robin", "params": {"speed": 3}}]}},
     "sweep.yaml: sweep.policies.0.params.speed: not a parameter of round_robin; expected some of []"),
    ({"base": {**BASE, "clster": {}}}, "sweep.yaml: base.clster: unknown key; expected one of ['name',"),
    ({"sweep": {**SWEEP["sweep"], "clusters": {"big": ["cluster.instances=[{role: middle}]"]}}},
     "sweep.yaml, point big/round_robin/rate=5/seed=0: cluster.instances.0.role"),
    ({"base_config": "missing.yaml"}, "sweep.yaml: base: give base"),
    ({"sweep": {**SWEEP["sweep"], "noise_seeds": [1, 1]}}, "duplicate noise seed '1'"),
    ({"sweep": {**SWEEP["sweep"], "noise_seeds": [-1]}},
     "sweep.yaml: sweep.noise_seeds.0: Input should be greater than or equal to 0, got -1"),
])
def test_bad_sweep_file_names_the_key(capsys, tmp_path, change, named):
    path = write(tmp_path, {**SWEEP, **change})
    code, _, err = sweep_command(capsys, path, "--out", tmp_path / "out")
    assert code == 2
    assert named in err
    assert not (tmp_path / "out").exists()


def test_base_config_path_and_tenant_rate_scale(tmp_path):
    tenants = {**BASE, "workload": {"requests": 50, "tenants": [
        {"name": "a", "arrival": {"process": "poisson", "rate": 2.0}, "lengths": BASE["workload"]["lengths"]},
        {"name": "b", "arrival": {"process": "poisson", "rate": 1.0}, "lengths": BASE["workload"]["lengths"]}]}}
    write(tmp_path, tenants, "base.yaml")
    path = write(tmp_path, {"base_config": "base.yaml", "set": ["workload.requests=20"],
                            "sweep": {"rates": [0.5, 2], "policies": ["round_robin"], "seeds": [3, 4]}})
    sweep = load_sweep(path, ["sweep.rates=[0.5, 2, 3]", "slo.ttft=2"])
    assert sweep.rate_key == "workload.rate_scale" and len(sweep.points) == 3 * 2
    assert [p.config.workload.rate_scale for p in sweep.points[:2]] == [0.5, 0.5]
    assert {p.config.seed for p in sweep.points} == {3, 4}
    assert all(p.config.workload.requests == 20 and p.config.slo["ttft"] == 2 for p in sweep.points)
    assert [t.arrival.rate for t in sweep.points[0].config.workload.tenants] == [2.0, 1.0]


def test_headline_counts_events_and_rejections():
    requests = pd.DataFrame({"request_id": [0, 1, 2], "arrival_s": [0.0, 0.1, 0.2], "prompt_tokens": [5, 5, 5],
                             "output_tokens": [2, 1, 0], "status": ["finished", "finished", "rejected"]})
    tokens = pd.DataFrame({"request_id": [0, 0, 1], "index": [1, 2, 1], "time_s": [0.5, 0.6, 0.7]})
    kinds = ["migrate_start", "migrate_start", "migrate_end", "migrate_abort", "preempt", "preempt", "preempt"]
    events = pd.DataFrame({"time_s": [0.55] * len(kinds), "kind": kinds, "request_id": [0] * len(kinds)})
    run = validate(Run(requests, tokens, events, {"end_s": 1.0}))
    row = headline(run, score(run)[1])
    assert (row["migrations_started"], row["migrations_completed"], row["migrations_aborted"],
            row["preemptions"], row["rejected"]) == (2, 1, 1, 3, 1)
    assert row["throughput_tokens_per_s"] == pytest.approx(3 / 1.0)
    assert (row["parks"], row["parked_s"]) == (0, 0.0)


def test_parked_seconds_run_from_each_park_to_its_resume_or_the_end():
    events = pd.DataFrame({"time_s": [1.0, 1.5, 2.0, 3.0, 4.0, 5.0], "request_id": [0, 1, 0, 0, 1, 2],
                           "kind": ["preempt", "preempt", "resume", "preempt", "finish", "preempt"],
                           "detail": ["swap", "swap", "", "swap", "", "recompute"]})
    assert parked(events, end_s=10.0) == (3, (2.0 - 1.0) + (4.0 - 1.5) + (10.0 - 3.0))


def _table(values: list[list[float]]) -> pd.DataFrame:
    rows = [{"cluster": "c", "policy": f"p{p}", "rate": float(r + 1), "seed": 0, "smooth_goodput": v,
             "ttft_tbt_token_goodput": 100.0 - v, "throughput_tokens_per_s": 10.0 * (r + 1)}
            for p, series in enumerate(values) for r, v in enumerate(series)]
    return pd.DataFrame(rows)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50).map(float), min_size=3, max_size=3, unique=True), min_size=2,
                max_size=3))
def test_reading_states_the_peaks_and_winners_of_the_numbers(values):
    lines = "\n".join(reading(_table(values)))
    for p, series in enumerate(values):
        peak = series.index(max(series)) + 1
        assert f"`p{p}`: smooth goodput peaks at rate {peak} ({max(series):.1f}/s" in lines
    for r in range(3):
        column = [series[r] for series in values]
        winners = " = ".join(f"p{p}" for p, v in enumerate(column) if v == max(column))
        assert f"rate {r + 1}: classic goodput" in lines and f"smooth goodput highest with {winners} " in lines
    assert "throughput is highest at rate 3 (30.0 tok/s) and first within 5% of that at rate 3" in lines


def test_harm_columns_count_moves_and_replayed_verdicts(tmp_path):
    from experiments.runs.runner import simulate
    from experiments.scoring.harm import harm_counts
    from router.slo import SLO
    from tests.test_harm import config

    run = simulate(config())
    counts = harm_counts(run, SLO(), {}, forks=2)
    assert counts["moves"] > 0 and counts["harmful"] + counts["neutral"] + counts["helpful"] == 2
    assert 0 <= counts["attributed_harmful"] <= counts["moves"]
    assert "harmful" not in harm_counts(run, SLO(), {}, forks=0)


def test_a_noise_seed_axis_runs_each_point_under_each_and_gives_the_ranges(capsys, tmp_path):
    spread = {"decode": [{"quantiles": {0: 0.9, 0.5: 1.0, 0.99: 1.8, 1: 3.0}}],
              "prefill": [{"quantiles": {0: 0.8, 1: 1.4}}]}
    noisy = {**BASE, "cluster": {**BASE["cluster"], "noise": spread}}
    path = write(tmp_path, {"base": noisy, "sweep": {"rates": [20], "policies": ["round_robin"], "seeds": [3],
                                                     "noise_seeds": [0, 1, 2]}})
    code, _, err = sweep_command(capsys, path, "--out", tmp_path / "out")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["noise_seed"]) == [0, 1, 2] and set(table["seed"]) == {3}
    runs = [read_run(tmp_path / "out" / "runs" / "base" / "round_robin" / "rate=20" / "seed=3" / f"noise={n}")
            for n in (0, 1, 2)]
    assert all(r.requests["output_tokens"].equals(runs[0].requests["output_tokens"]) for r in runs)
    assert not runs[1].tokens["time_s"].equals(runs[0].tokens["time_s"])
    ranges = pd.read_csv(tmp_path / "out" / "noise_ranges.csv")
    tbt = ranges[ranges["metric"] == "tbt_p99_s"].iloc[0]
    assert tbt["min"] == table["tbt_p99_s"].min() and tbt["max"] == table["tbt_p99_s"].max() and tbt["spread"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "each under 3 noise seeds" in report and "over the noise seeds, `tbt_p99_s` spreads" in report

