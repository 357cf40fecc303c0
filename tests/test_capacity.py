"""`pdlab capacity`: the bracketing and bisection, the target and its errors, and a
small search whose table agrees with its probes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cluster.hardware.yamlfile import ConfigError
from experiments.sweeps.capacity import MAX_PROBES, Bracket, load_search, parse_target, run_capacity

CONFIG = {
    "name": "tiny-capacity",
    "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                "instances": [{"role": "prefill"}, {"role": "decode"}]},
    "workload": {"requests": 200, "arrival": {"process": "poisson", "rate": 4.0},
                 "lengths": {"dist": "uniform", "prompt": [64, 1024], "output": [32, 256]}},
    "slo": {"ttft": 1.0, "tbt": 0.1, "v": 0.1, "l": 1.0, "alpha": 5},
}


@given(st.floats(0.05, 500), st.floats(1 / 64, 64), st.sampled_from([0.02, 0.05, 0.2]))
def test_bisection_brackets_a_threshold_within_the_tolerance(capacity, ratio, tolerance):
    bracket, start = Bracket(), capacity * ratio
    while (rate := bracket.next_rate(start, tolerance)) is not None:
        bracket.record(rate, rate <= capacity)
    assert bracket.probes <= MAX_PROBES
    assert bracket.meets <= capacity < bracket.fails
    assert bracket.fails - bracket.meets <= tolerance * bracket.fails or bracket.probes == MAX_PROBES


def test_a_policy_that_never_meets_the_target_has_no_capacity():
    bracket = Bracket()
    while (rate := bracket.next_rate(1.0, 0.05)) is not None:
        bracket.record(rate, False)
    assert bracket.meets is None and bracket.fails < 1.0


@pytest.mark.parametrize("text, named", [("smoth:0.9", "SCHEME one of"), ("smooth:1.5", "in (0, 1]"),
                                         ("smooth", "in (0, 1]"), ("ttft_tbt:x", "in (0, 1]")])
def test_a_bad_target_names_what_is_expected(text, named):
    with pytest.raises(ConfigError, match="--target") as error:
        parse_target(text)
    assert named in str(error.value)


def write_config(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_an_unknown_policy_and_a_bad_tolerance_are_clear_errors(tmp_path):
    path = write_config(tmp_path)
    with pytest.raises(ConfigError, match="--policies: .*unknown policy 'nope'"):
        load_search(path, "smooth:0.9", ["nope"])
    with pytest.raises(ConfigError, match="--tolerance"):
        load_search(path, "smooth:0.9", tolerance=1.5)


def test_a_policy_is_given_with_its_params_and_labelled_by_them(tmp_path):
    path = write_config(tmp_path)
    search = load_search(path, "smooth:0.9", ["smooth_goodput:park=false,min_park_s=3", "least_loaded"])
    first = search.policies[0]
    assert (first.name, first.params, first.key) == ("smooth_goodput", {"park": False, "min_park_s": 3},
                                                     "smooth_goodput.park-False.min_park_s-3")
    with pytest.raises(ConfigError, match="--policies: .*expected NAME or NAME:KEY=VALUE"):
        load_search(path, "smooth:0.9", ["smooth_goodput:park"])
    with pytest.raises(ConfigError, match="--policies: params.nope: not a parameter of least_loaded; expected some of"):
        load_search(path, "smooth:0.9", ["least_loaded:nope=1"])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("capacity")
    search = load_search(write_config(folder), "ttft_tbt:0.9", ["round_robin", "least_loaded"], [0, 1])
    return search, folder / "out", *run_capacity(search, folder / "out", quiet=True)


def test_the_capacity_meets_the_target_and_the_next_rate_does_not(searched):
    search, out, probes, table = searched
    assert list(table["policy"]) == ["round_robin", "least_loaded"]
    for row in table.itertuples(index=False):
        mine = probes[probes["policy"] == row.policy]
        mean = mine.groupby("rate")["ttft_tbt_attainment"].mean()
        assert row.bracketed and row.capacity_rate < row.first_missing_rate
        assert mean[row.capacity_rate] >= 0.9 > mean[row.first_missing_rate]
        assert (row.first_missing_rate - row.capacity_rate) <= 0.05 * row.first_missing_rate
        assert row.attainment_mean == pytest.approx(mean[row.capacity_rate])
        assert row.x_ceiling == pytest.approx(row.capacity_rate / row.ceiling_rate) and row.ceiling_binds
        assert row.rates_tried == mine["rate"].nunique() and len(mine) == 2 * row.rates_tried
    assert (out / "runs" / "base" / "least_loaded" / f"rate={table['capacity_rate'].iloc[1]:g}" / "seed=1").is_dir()


def test_the_same_search_in_two_processes_gives_the_same_probes(searched, tmp_path):
    search, _, probes, table = searched
    again, table_again = run_capacity(search, tmp_path, jobs=2, keep_runs=False, quiet=True)
    pd.testing.assert_frame_equal(again, probes)
    pd.testing.assert_frame_equal(table_again, table)
    assert not (tmp_path / "runs").exists()


def test_the_command_prints_the_table_and_writes_the_plot(tmp_path):
    path = write_config(tmp_path)
    pdlab = str(Path(sys.executable).with_name("pdlab"))
    done = subprocess.run([pdlab, "capacity", str(path), "--seeds", "0", "--out", str(tmp_path / "out"),
                           "--no-runs", "--tolerance", "0.2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "capacity at smooth:0.9" in done.stdout and "round_robin" in done.stdout
    assert "steady-state ceiling" in done.stdout and "x ceiling" in done.stdout
    assert (tmp_path / "out" / "plots" / "capacity.png").is_file()
    assert len(pd.read_csv(tmp_path / "out" / "capacity.csv")) == 1
    bad = subprocess.run([pdlab, "capacity", str(path), "--target", "smooth:2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--target" in bad.stderr and "Traceback" not in bad.stderr


def test_a_steady_target_judges_each_seed_by_the_lower_of_all_arrivals_and_the_last_quarter():
    probes = pd.DataFrame({"smooth_attainment": [0.95, 0.99], "smooth_attainment_last_quarter": [0.70, 1.0]})
    assert parse_target("smooth:0.9").met(probes) == (pytest.approx(0.97), True)
    steady = parse_target("smooth:0.9", steady=True)
    assert list(steady.per_seed(probes)) == [0.70, 0.99]
    assert steady.met(probes) == (pytest.approx(0.845), False)
    assert "last quarter" in str(steady)
