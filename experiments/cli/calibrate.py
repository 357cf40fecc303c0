"""`pdlab calibrate PROFILE.csv | RUN | --engine vllm|hf`: fit the iteration-time model
to measured iterations (experiments/calibration/calibrate.py) and write it as a perf YAML."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _labels(args: argparse.Namespace) -> dict:
    from cluster.hardware.specs import load_hardware, load_model
    from experiments.calibration.calibrate import CalibrationError

    if (args.model is None) != (args.hardware is None):
        raise CalibrationError("--model and --hardware go together (with --tp): they say which fit the file is")
    if args.model is None:
        return {}
    return {"model_name": load_model(args.model).name, "hardware": load_hardware(args.hardware).name, "tp": args.tp}


def _profile(args: argparse.Namespace) -> Path:
    """The profile CSV: the one given, or one measured now on a real engine."""
    from experiments.calibration.calibrate import CalibrationError

    if args.engine is None:
        if args.profile is None:
            raise CalibrationError("give a profile CSV or a live run folder, or --engine vllm|hf with --model-path "
                                   "to measure one")
        return Path(args.profile)
    if not args.model_path or not (Path(args.model_path) / "config.json").is_file():
        raise CalibrationError(f"--model-path: expected a model folder with a config.json, got {args.model_path!r} "
                               f"(make one with `pdlab model make FOLDER`)")
    from experiments.calibration.profiling import profile_engine

    rows = profile_engine(args.engine, args.model_path, args.block_size, repeats=args.repeats, address=args.address,
                          engines=args.engines)
    path = Path(args.profile or (Path(args.out).with_suffix(".profile.csv") if args.out else "profile.csv"))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)
    print(f"profiled {len(rows)} iterations of the {args.engine} engine; wrote {path}")
    return path


def _run(args: argparse.Namespace) -> int:
    from cluster.hardware.perfmodel import write_iteration_model
    from cluster.hardware.yamlfile import ConfigError
    from experiments.calibration.calibrate import CalibrationError, calibrate, report

    try:
        labels = _labels(args)
        result = calibrate(_profile(args))
        print(report(result))
        if args.out:
            print(f"wrote {write_iteration_model(args.out, result.perf, **labels)}")
    except (CalibrationError, ConfigError) as exc:
        print(f"pdlab calibrate: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of GPUs >= 1, got {text!r}")
    return int(text)


def add_parser(commands) -> argparse.ArgumentParser:
    """Register `calibrate` on the `pdlab` subparsers; its handler returns an exit code."""
    calibrate_cmd = commands.add_parser("calibrate", help="fit the iteration-time model to measured iterations")
    calibrate_cmd.add_argument("profile", nargs="?", help="CSV: prefill_tokens, [prefill_tokens_sq], decode_batch, "
                                                          "decode_context, time_s; one row per iteration; or a live "
                                                          "run folder, whose steps table has them (with --engine: "
                                                          "where the measured profile goes)")
    calibrate_cmd.add_argument("--engine", choices=["vllm", "hf"], help="measure the profile on a real engine here")
    calibrate_cmd.add_argument("--model-path", help="with --engine: the model folder (pdlab model make)")
    calibrate_cmd.add_argument("--block-size", type=_positive, default=32, help="with --engine: KV block size "
                                                                               "(default 32, as vLLM's CPU build needs)")
    calibrate_cmd.add_argument("--address", help="with --engine: profile on the Ray cluster at HOST:PORT "
                                                 "(default: a local Ray)")
    calibrate_cmd.add_argument("--engines", type=_positive, default=1,
                               help="with --engine: engines profiled at once, one per core (as many as the cluster "
                                    "you predict runs per machine: 2 for 1 prefill + 1 decode on 2 cores)")
    calibrate_cmd.add_argument("--repeats", type=_positive, default=3, help="with --engine: runs of each shape")
    calibrate_cmd.add_argument("--out", metavar="FILE.yaml", help="write the fit as a perf YAML (configs/perf format)")
    calibrate_cmd.add_argument("--model", help="model name or YAML the profile measured (labels --out)")
    calibrate_cmd.add_argument("--hardware", help="hardware name or YAML the profile measured (labels --out)")
    calibrate_cmd.add_argument("--tp", type=_positive, default=1, help="tensor parallel degree (default 1)")
    calibrate_cmd.set_defaults(handler=_run)
    return calibrate_cmd
