"""Benchmark: does the calibrated simulator predict a live cluster of real engines?
A small cluster (1 prefill + 1 decode worker, or one colocated worker) of vLLM's CPU
build (or the hf engine) serves a workload live on a local Ray; the simulator runs the
same config with a fitted perf model; TTFT and TPOT side by side with the relative
error (target: medians within 15%; p90 printed).

The fit comes from the cluster itself by default (`--fit run`): a first live run of the
same config on another seed (at `--calibration-rate`), `pdlab calibrate RUN` on its
steps table; or from a perf YAML (`--fit profile --perf FILE`, e.g. what
`pdlab calibrate --engine vllm` measured on one idle engine).

    .venv/bin/pdlab model make models/tiny-llama
    .venv/bin/python benchmarks/bench_calibration.py [--engine vllm] [--requests 40] [--rate 1] [--layout disagg|colocated]
    .venv/bin/python benchmarks/bench_calibration.py --fit profile --perf configs/perf/vllm-cpu-tiny-llama.yaml
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cluster.hardware.perfmodel import write_iteration_model
from experiments.calibration.calibrate import calibrate, report
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import run_config, run_experiment
from experiments.scoring.metrics import score
from router.slo import SLO


def config(engine: str, model_path: str, perf: str, requests: int, rate: float, layout: str) -> ExperimentConfig:
    """The benchmark's cluster (a fit from a live run carries its hand-offs' overhead as noise)."""
    instances = [{"role": "colocated"}] if layout == "colocated" else [{"role": "prefill"}, {"role": "decode"}]
    return ExperimentConfig.model_validate({
        "name": "calibration", "seed": 0, "runtime": "ray",
        "cluster": {"model": "tiny-llama", "hardware": "CPU", "perf": perf, "kv_blocks": 160,
                    "scheduler": {"block_size": 32, "max_num_seqs": 64, "max_num_batched_tokens": 4096},
                    "instances": instances},
        "router": {"policy": "round_robin"},
        "ray": {"engine": engine, "model_path": model_path, "start_timeout_s": 180},
        "workload": {"requests": requests, "arrival": {"process": "poisson", "rate": rate},
                     "lengths": {"dist": "dataset", "name": "sharegpt", "max_prompt": 1024, "max_output": 256}},
        "slo": {"ttft": 0.25, "tbt": 0.03, "tpot": 0.03, "v": 0.02, "l": 0.25, "alpha": 5}})


def figures(summary: dict) -> dict[str, float]:
    return {"TTFT p50 (ms)": summary["ttft_s"]["p50"] * 1e3, "TTFT p90 (ms)": summary["ttft_s"]["p90"] * 1e3,
            "TPOT p50 (ms)": summary["tpot_s"]["p50"] * 1e3, "TPOT p90 (ms)": summary["tpot_s"]["p90"] * 1e3,
            "TBT p50 (ms)": summary["tbt_s"]["p50"] * 1e3}


def fit_from_run(args, folder: Path) -> str:
    """Serve a calibration workload live (another seed) and fit the model, its noise and
    its hand-offs to the run; the fit's perf YAML."""
    cfg = config(args.engine, args.model_path, args.perf, args.requests, args.calibration_rate or args.rate, args.layout)
    run_experiment(cfg.model_copy(update={"seed": cfg.seed + 1}), folder / "calibration-run")
    result = calibrate(folder / "calibration-run")
    print(f"fitted to the steps of a live calibration run ({args.calibration_rate or args.rate:g} req/s, seed 1):")
    print(report(result))
    return str(write_iteration_model(folder / "fit.yaml", result.perf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--model-path", default="models/tiny-llama")
    parser.add_argument("--fit", choices=["run", "profile"], default="run",
                        help="fit the model to a live calibration run's steps (default), or use --perf as it is")
    parser.add_argument("--perf", default="configs/perf/vllm-cpu-tiny-llama.yaml")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--calibration-rate", type=float, help="with --fit run: the calibration run's rate "
                                                              "(default --rate)")
    parser.add_argument("--layout", choices=["disagg", "colocated"], default="disagg",
                        help="1 prefill + 1 decode worker (default), or one colocated worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdlab-calibration-") as folder:
        perf = fit_from_run(args, Path(folder)) if args.fit == "run" else args.perf
        live_config = config(args.engine, args.model_path, perf, args.requests, args.rate, args.layout)
        slo = SLO(**live_config.slo)
        started = time.perf_counter()
        live = run_config(live_config)
        wall = time.perf_counter() - started
        simulated = run_config(live_config.model_copy(update={"runtime": "sim"}))
    a, b = figures(score(live, slo)[1]), figures(score(simulated, slo)[1])
    print(f"{'1P+1D' if args.layout == 'disagg' else '1 colocated'} {args.engine} tiny-llama on CPU, {args.requests} "
          f"ShareGPT-shaped requests at {args.rate:g}/s, seed 0, fit {'from the calibration run' if args.fit == 'run' else perf}; "
          f"live run {wall:.1f} s wall")
    print(f"{'metric':16s} {'live':>10s} {'simulated':>10s} {'error':>8s}")
    errors = {name: (b[name] - a[name]) / a[name] for name in a}
    for name, error in errors.items():
        print(f"{name:16s} {a[name]:10.2f} {b[name]:10.2f} {error:+8.1%}")
    medians = max(abs(errors[name]) for name in ("TTFT p50 (ms)", "TPOT p50 (ms)"))
    print(f"largest median error {medians:.1%} (target <= 15%): {'met' if medians <= 0.15 else 'NOT met'}; "
          f"p90 errors {errors['TTFT p90 (ms)']:+.1%} (TTFT), {errors['TPOT p90 (ms)']:+.1%} (TPOT)")


if __name__ == "__main__":
    main()
