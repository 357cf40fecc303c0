"""Step-time noise: fitted from steps, it gives back the spread it came from; drawn
in the simulator from a seed, the same seed is the same run; set by hand in YAML,
bad values are named."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cluster.hardware.noise import NoiseDraws, NoiseSection, StepNoise
from cluster.hardware.perfmodel import IterationModel, load_iteration_model, write_iteration_model
from cluster.hardware.yamlfile import ConfigError, validate
from experiments.calibration.noise import fit_noise, step_ratios
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import simulate

PERF = IterationModel((0.01, 1e-4, 0.0), (0.008, 2e-4, 1e-7), "test")
RATIO_QUANTILES = (0.5, 0.9, 0.99)


def _steps(count: int, rng, ratio_of) -> pd.DataFrame:
    batch = rng.integers(1, 64, count)
    context = batch * rng.integers(100, 2000, count)
    modelled = np.array([PERF.decode_time(int(b), int(c)) for b, c in zip(batch, context)])
    return pd.DataFrame({"instance": 1, "end_s": np.cumsum(modelled), "time_s": modelled * ratio_of(modelled),
                         "prefill_tokens": 0, "prefill_tokens_sq": 0.0, "decode_batch": batch,
                         "decode_context": context})


def _drawn(noise: StepNoise, modelled: np.ndarray, seed: int = 0) -> np.ndarray:
    draws = NoiseDraws(noise, seed, 0)
    return np.array([draws.time("decode", m) for m in modelled]) / modelled


def test_the_fitted_spread_matches_the_residuals_it_came_from():
    rng = np.random.default_rng(1)
    steps = _steps(20_000, rng, lambda m: 1 + rng.lognormal(-3.5, 0.8, len(m)))
    noise = fit_noise(steps, PERF, "test")
    assert list(noise.bands) == ["decode"] and len(noise.bands["decode"]) == 1
    residuals = step_ratios(steps, PERF)["ratio"].to_numpy()
    spread = residuals / residuals.mean()                # the fit carries the mean, the noise the spread
    drawn = _drawn(noise, np.repeat(0.02, 50_000))
    assert drawn.mean() == pytest.approx(1.0, abs=0.005)
    for p in RATIO_QUANTILES:
        assert np.quantile(drawn, p) == pytest.approx(np.quantile(spread, p), rel=0.01), p


def test_a_spread_that_depends_on_step_size_gets_bands():
    rng = np.random.default_rng(2)
    steps = _steps(6_000, rng, lambda m: 1 + rng.exponential(0.0005 / m))       # a fixed lateness in seconds
    bands = fit_noise(steps, PERF, "test").bands["decode"]
    assert len(bands) == 3 and bands[0].up_to_s < bands[1].up_to_s < bands[2].up_to_s == math.inf
    assert bands[0].quantile(0.99) > bands[2].quantile(0.99)
    table = step_ratios(steps, PERF)
    short = table[table["modelled_s"] <= bands[0].up_to_s]
    drawn = _drawn(fit_noise(steps, PERF, "test"), short["modelled_s"].to_numpy())
    assert np.quantile(drawn, 0.9) == pytest.approx(np.quantile(short["ratio"] / short["ratio"].mean(), 0.9),
                                                    rel=0.02)


def test_late_starts_count_as_step_time():
    rng = np.random.default_rng(3)
    steps = _steps(500, rng, lambda m: np.ones(len(m)))
    steps["late_s"] = np.where(np.arange(500) % 10 == 0, 0.05, 0.0)
    ratios = step_ratios(steps, PERF)["ratio"]
    assert (ratios[::10] > 1).all() and (ratios.drop(index=ratios.index[::10]) == 1).all()


def _config(**cluster) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "seed": 0, "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}], **cluster},
        "workload": {"requests": 60, "arrival": {"process": "poisson", "rate": 8.0},
                     "lengths": {"dist": "uniform", "prompt": [20, 800], "output": [10, 120]}}})


SPREAD = {"decode": [{"quantiles": {0: 0.95, 0.5: 1.0, 0.99: 1.6, 1: 3.0}}],
          "prefill": [{"quantiles": {0: 0.9, 1: 1.3}}]}


def test_the_same_noise_seed_gives_the_same_run_and_another_a_different_one():
    first, again = simulate(_config(noise=SPREAD)), simulate(_config(noise=SPREAD))
    pd.testing.assert_frame_equal(first.tokens, again.tokens)
    other = simulate(_config(noise=SPREAD, noise_seed=7))
    assert not other.tokens["time_s"].equals(first.tokens["time_s"])
    quiet = simulate(_config())
    assert (other.requests["output_tokens"] == quiet.requests["output_tokens"]).all()    # the workload stays
    gaps = {name: np.diff(run.tokens.sort_values(["request_id", "index"])["time_s"]) for name, run in
            (("noisy", first), ("quiet", quiet))}
    assert np.percentile(gaps["noisy"], 99) > np.percentile(gaps["quiet"], 99)


def test_noise_of_ratio_one_or_off_is_the_deterministic_run():
    quiet = simulate(_config())
    ones = simulate(_config(noise={"decode": [{"quantiles": {0: 1.0, 1: 1.0}}],
                                   "prefill": [{"quantiles": {0: 1.0, 1: 1.0}}]}))
    pd.testing.assert_frame_equal(quiet.tokens, ones.tokens)
    pd.testing.assert_frame_equal(quiet.tokens, simulate(_config(noise=False)).tokens)


def test_a_fit_file_keeps_its_noise_and_a_run_uses_it_unless_off(tmp_path):
    noise = NoiseSection.model_validate(SPREAD).noise()
    path = write_iteration_model(tmp_path / "fit.yaml", IterationModel((0.01, 1e-4, 0.0), (0.008, 2e-4, 1e-7),
                                                                       "test", noise=noise))
    loaded = load_iteration_model(path)
    assert loaded.noise == noise
    with_fit = simulate(_config(perf=str(path)))
    assert not with_fit.tokens.equals(simulate(_config(perf=str(path), noise=False)).tokens)


@pytest.mark.parametrize("noise, message", [
    ({"decode": [{"quantiles": {0: 1.0, 0.5: 0.9, 1: 1.2}}]},
     "cluster.noise.decode.0.quantiles: expected values >= 0 that do not fall"),
    ({"decode": [{"quantiles": {0.2: 1.0, 1: 1.2}}]}, "expected probabilities rising from 0 to 1"),
    ({"decode": [{"up_to_s": 0.01, "quantiles": {0: 1.0, 1: 1.2}}]}, "the last without one"),
    ({"decod": [{"quantiles": {0: 1.0, 1: 1.2}}]}, "cluster.noise.decod: unknown key"),
    ("loud", "cluster.noise: expected off, a section")])
def test_a_bad_noise_section_is_named(noise, message):
    with pytest.raises(ConfigError, match=message):
        validate({"cluster": {"noise": noise}, "workload": {"requests": 1}}, ExperimentConfig, "config.yaml")


def _write_config(tmp_path, noise) -> str:
    import yaml

    data = {"name": "noisy", "seed": 0, "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}],
                                                    "noise": noise},
            "slo": {"ttft": 1.0, "tbt": 0.025},
            "workload": {"requests": 40, "arrival": {"process": "poisson", "rate": 8.0},
                         "lengths": {"dist": "uniform", "prompt": [20, 800], "output": [10, 120]}}}
    path = tmp_path / "noisy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_run_over_noise_seeds_gives_each_metrics_range(pdlab, tmp_path):
    code, out, err = pdlab("run", _write_config(tmp_path, SPREAD), "--noise-seeds", "3", "--out", tmp_path / "out")
    assert code == 0, err
    ranges = pd.read_csv(tmp_path / "out" / "noise_ranges.csv").set_index("metric")
    assert sorted(p.name for p in (tmp_path / "out").glob("noise-*")) == ["noise-0", "noise-1", "noise-2"]
    assert (ranges["min"] <= ranges["median"]).all() and (ranges["median"] <= ranges["max"]).all()
    assert ranges.loc["TBT p99 (s)", "max"] > ranges.loc["TBT p99 (s)", "min"]
    assert ranges["knife_edge"].any() and "knife-edge" in out
    code, out, _ = pdlab("run", _write_config(tmp_path, False), "--noise-seeds", "2", "--out", tmp_path / "quiet")
    assert code == 0 and "every noise seed gave the same run" in out
    with pytest.raises(SystemExit):
        pdlab("run", _write_config(tmp_path, False), "--noise-seeds", "1")


def test_handoff_noise_adds_its_seconds_to_every_transfer():
    def transfers(run) -> pd.Series:
        events = run.events.groupby(["request_id", "kind"])["time_s"].min().unstack()
        return events["transfer_end"] - events["transfer_start"]

    quiet = transfers(simulate(_config()))
    slower = transfers(simulate(_config(noise={"handoff": {"quantiles": {0: 0.02, 1: 0.02}}})))
    assert (slower >= 0.02).all() and np.median(slower - quiet) == pytest.approx(0.02, abs=2e-4)


def test_a_floor_shows_as_steps_of_exactly_the_shortest_time():
    from experiments.calibration.calibrate import floor_s

    assert floor_s(np.array([0.0202, 0.0202, 0.0202, 0.05, 0.3])) == 0.0202
    assert floor_s(np.array([0.0201, 0.0202, 0.0203, 0.05])) == 0.0


def _ttft(run) -> pd.Series:
    first = run.tokens[run.tokens["index"] == 1].set_index("request_id")["time_s"]
    return first - run.requests.set_index("request_id")["arrival_s"].reindex(first.index)


def test_dispatch_noise_delays_each_request_reaching_its_queue():
    quiet, slower = (simulate(_config(**extra)) for extra in
                     ({}, {"noise": {"dispatch": {"quantiles": {0: 0.01, 1: 0.01}}}}))
    added = _ttft(slower) - _ttft(quiet)
    assert (added >= 0.01 - 1e-9).all() and np.median(added) == pytest.approx(0.01, abs=2e-3)
    again = simulate(_config(noise={"dispatch": {"quantiles": {0: 0.0, 0.5: 0.004, 1: 0.02}}}))
    pd.testing.assert_frame_equal(again.tokens, simulate(
        _config(noise={"dispatch": {"quantiles": {0: 0.0, 0.5: 0.004, 1: 0.02}}})).tokens)


def test_the_dispatch_fit_measures_dispatch_to_the_next_step_of_an_idle_instance():
    from experiments.calibration.noise import dispatch_extra_s
    from experiments.runs.runformat import Run

    events = pd.DataFrame({"time_s": [1.0, 2.0, 2.01, 5.0], "kind": "dispatch", "request_id": [0, 1, 2, 3],
                           "instance": [0, 0, 0, 1]})
    steps = pd.DataFrame({"instance": [0, 0, 0, 1], "end_s": [1.103, 2.2, 2.4, 5.25], "time_s": [0.1, 0.195, 0.2, 0.2],
                          "prefill_tokens": [100, 100, 100, 100], "prefill_tokens_sq": 1e4, "decode_batch": 0,
                          "decode_context": 0})
    gaps = dispatch_extra_s(Run(pd.DataFrame(), pd.DataFrame(), events, {}, steps))
    # request 2 came while request 1's step was under way: not a dispatch to an idle instance
    assert gaps == pytest.approx([0.003, 0.005, 0.05])
