"""The `pdlab` command line."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from experiments.cli.ablate import add_parser as add_ablate
from experiments.cli.calibrate import add_parser as add_calibrate
from experiments.cli.capacity import add_parser as add_capacity
from experiments.cli.harm import add_parser as add_harm
from experiments.cli.install import add_parser as add_install
from experiments.cli.model import add_parser as add_model
from experiments.cli.serve import add_parser as add_serve
from experiments.cli.sweep import add_parser as add_sweep
from experiments.cli.vllmshim import add_parser as add_vllm
from router.slo import SLO

SLO_FLAGS = {  # flag -> (SLO field, help)
    "--ttft": ("ttft", "TTFT deadline in seconds (ttft_tbt, ttft_tpot; fluidity and Andes first-token deadline)"),
    "--tbt": ("tbt", "TBT deadline in seconds (ttft_tbt; fluidity per-token deadline)"),
    "--tpot": ("tpot", "TPOT deadline in seconds (ttft_tpot)"),
    "--e2e": ("e2e", "end-to-end deadline in seconds (e2e)"),
    "--slo-v": ("v", "seconds per token the user reads (smooth; idle latency). 0.1 = 10 tokens/s"),
    "--slo-l": ("l", "idle seconds the user tolerates (smooth; step f)"),
    "--alpha": ("alpha", "weight of the idle penalty in benefit = n - alpha*f(idle)"),
    "--f": ("f", "idle penalty f: tokens, seconds, fraction or step"),
    "--l-max": ("l_max", "idle seconds that lose the whole request under f=fraction"),
}


def slo_overrides(args: argparse.Namespace) -> dict:
    """The SLO fields given as flags."""
    values = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (field, _) in SLO_FLAGS.items()}
    return {field: value for field, value in values.items() if value is not None}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number of seeds >= 2, got {text!r}")
    return int(text)


def _metrics(args: argparse.Namespace) -> int:
    from experiments.cli.show import print_summaries
    from experiments.runs.imports import read_any
    from experiments.runs.runformat import validate
    from experiments.scoring.delay import delay_output
    from experiments.scoring.metrics import Window, run_slos, score
    from experiments.scoring.vllmgoodput import parse_goodput, slo_of, vllm_goodput

    limits = parse_goodput(args.goodput) if args.goodput else {}
    run = read_any(args.run, args.benchmark)
    slo, tenants = run_slos(run.meta, {**slo_of(limits), **slo_overrides(args)})
    window = Window(args.warmup, args.cooldown)
    table, summary = score(run, slo, window, tenants, args.interval)
    if limits:
        summary["vllm_goodput"] = vllm_goodput(table, limits, summary["serving_time_s"])
    summaries = {"run": summary}
    if run.meta.get("token_times_known") and not args.compare:
        summary["bounds"] = _spread_bounds(run, slo, window, tenants, args.interval)
    if args.compare:
        summaries = _compared(run, read_any(args.compare, args.benchmark), slo, window, tenants)
    if args.delay_output is not None:
        summaries["output delayed"] = score(validate(delay_output(run, args.delay_output)), slo, window, tenants)[1]
    if args.per_request:
        Path(args.per_request).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.per_request, index=False)
    if args.json:
        print(json.dumps(summary if len(summaries) == 1 else summaries, indent=2))
    else:
        print_summaries(summaries if "bounds" not in summary else
                        {"tokens even": summary, **{f"tokens {how}": s for how, s in summary["bounds"].items()},
                         **{name: s for name, s in summaries.items() if name != "run"}})
        if "bounds" in summary:
            print(f"{run.meta['token_times_known']} known: TTFT, TPOT, E2E, throughput and the ttft_tpot and e2e "
                  "schemes are exact; TBT, idle latency, smooth goodput and the ttft_tbt and smooth schemes depend "
                  "on when the tokens in between came, shown spread evenly and at the two ends the file allows "
                  "(all at the first token, all at the last): bounds, not measurements")
        if limits:
            found = summary["vllm_goodput"]
            print(f"vLLM goodput ({' '.join(f'{k}:{v:g}' for k, v in limits.items())} ms, vllm bench serve's rule): "
                  f"{found['good_requests']} good requests, {found['request_goodput']:.3f} req/s; the table's "
                  f"ttft_tpot{' and e2e' if 'e2el' in limits else ''} scheme uses the same limits")
    return 0


def _spread_bounds(run, slo, window, tenants, interval) -> dict:
    """The run scored with its unknown token times at both ends the file allows."""
    from experiments.runs.guidellm import spread
    from experiments.scoring.metrics import score

    return {how: score(spread(run, how), slo, window, tenants, interval)[1] for how in ("earliest", "latest")}


def _compared(run, other, slo, window, tenants) -> dict:
    """Both runs scored alike, and the latency the path from server to client added."""
    from experiments.scoring.compare import added_latency, label
    from experiments.scoring.metrics import score

    names = [label(run), label(other)]
    if names[0] == names[1]:
        names = [f"{names[0]} (first)", f"{names[1]} (second)"]
    summaries = {name: score(r, slo, window, tenants)[1] for name, r in zip(names, (run, other))}
    server, client = (run, other) if label(run) == "server" else (other, run)
    added = added_latency(client, server)
    if added["matched"]:
        ttft, e2e = added["ttft_s"], added["e2e_s"]
        print(f"matched {added['matched']} requests by {added['by']}; client minus server: "
              f"TTFT {ttft['p50'] * 1e3:+.1f} ms p50, {ttft['p99'] * 1e3:+.1f} ms p99; "
              f"E2E {e2e['p50'] * 1e3:+.1f} ms p50, {e2e['p99'] * 1e3:+.1f} ms p99")
    else:
        print("matched 0 requests (the server kept no client request ids): the runs are compared as wholes")
    return summaries


def _import(args: argparse.Namespace) -> int:
    from experiments.runs.imports import read_any
    from experiments.runs.runformat import write_run

    run = read_any(args.source, args.benchmark)
    path = write_run(run, args.out)
    print(f"wrote run {path} ({len(run.requests)} requests, {len(run.tokens)} tokens)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from experiments.cli.show import print_summaries
    from experiments.config.experiment import load_variants
    from experiments.runs.imports import read_any
    from experiments.runs.runner import run_experiment
    from experiments.scoring.metrics import run_slos, score

    overrides = list(args.set) + ([f"runtime={args.runtime}"] if args.runtime else [])
    overrides += [f"ray.address={args.address}"] if args.address else []
    configs = load_variants(args.config, overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.noise_seeds:
        return _noise_ranges(args, out, overrides)
    summaries, code = {}, 0
    for variant, config in configs.items():
        path = run_experiment(config, out / variant if len(configs) > 1 else out)
        run = read_any(path)
        slo, tenants = run_slos(run.meta)
        summaries[variant] = score(run, slo, tenant_slos=tenants)[1]
        print(f"wrote run {path}")
        lost = run.meta.get("workers_lost", [])
        if lost and len(lost) >= sum(g.count for g in config.cluster.instances):
            print(f"pdlab run: error: every worker died (instances {lost}); {path} holds what they served, "
                  f"every other request ended with its reason", file=sys.stderr)
            code = 1
    print_summaries(summaries)
    return code


def _noise_ranges(args: argparse.Namespace, out: Path, overrides: list[str]) -> int:
    """Each variant under noise seeds 0..N-1 (the workload fixed): every metric's range."""
    import pandas as pd

    from experiments.cli.show import print_ranges
    from experiments.config.experiment import load_variants
    from experiments.runs.imports import read_any
    from experiments.runs.runner import run_experiment
    from experiments.scoring.metrics import run_slos, score
    from experiments.scoring.ranges import metric_ranges

    ranges = {}
    for seed in range(args.noise_seeds):
        configs = load_variants(args.config, [*overrides, f"cluster.noise_seed={seed}"])
        for variant, config in configs.items():
            run = read_any(run_experiment(config, out / variant / f"noise-{seed}" if len(configs) > 1
                                          else out / f"noise-{seed}"))
            slo, tenants = run_slos(run.meta)
            ranges.setdefault(variant, []).append(score(run, slo, tenant_slos=tenants)[1])
    tables = {variant: metric_ranges(found) for variant, found in ranges.items()}
    path = out / "noise_ranges.csv"
    pd.concat([table.assign(variant=variant) for variant, table in tables.items()]).to_csv(path, index=False)
    print_ranges(tables, args.noise_seeds)
    if all((table["spread"] == 0).all() for table in tables.values()):
        print("every noise seed gave the same run: the iteration model has no noise (set cluster.noise, or use a "
              "fit that `pdlab calibrate RUN` made from a live run)")
    print(f"wrote {path}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from experiments.cli.quickstart import quickstart

    return quickstart(Path(args.out), args.set)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pdlab", description="A testbed for disaggregated LLM serving.")
    commands = top.add_subparsers(dest="command", required=True)

    metrics = commands.add_parser("metrics", help="score a run: classic SLOs, smooth goodput, peer metrics")
    metrics.add_argument("run", help="a run folder, a .jsonl of token timelines, a `vllm bench serve` .json result "
                                          "or a GuideLLM benchmarks .json")
    for flag, (field, text) in SLO_FLAGS.items():
        kind = str if field == "f" else _seconds
        metrics.add_argument(flag, type=kind, default=None, help=f"{text} (default {getattr(SLO(), field)})")
    metrics.add_argument("--warmup", type=_seconds, default=0.0, help="leave out requests arriving in the first SECONDS")
    metrics.add_argument("--cooldown", type=_seconds, default=0.0, help="leave out requests arriving in the last SECONDS")
    metrics.add_argument("--delay-output", type=_seconds, metavar="TBT",
                         help="also score the run with the output-delay trick at one token per TBT seconds")
    metrics.add_argument("--goodput", nargs="+", metavar="KEY:MS",
                         help="vLLM's goodput limits as `vllm bench serve --goodput` takes them, in milliseconds "
                              "(ttft, tpot, e2el), e.g. --goodput ttft:50 tpot:6; also sets the SLO's ttft/tpot/e2e")
    metrics.add_argument("--interval", choices=["tokens", "bench"], default="tokens",
                         help="what rates divide by: first arrival to last token (default), or the benchmark's own "
                              "duration (bench: vllm bench serve's `duration`, as vLLM divides)")
    metrics.add_argument("--compare", metavar="OTHER",
                         help="score OTHER alike and show both (a client's result against the `pdlab serve` run "
                              "folder it drove: requests matched by the client's request ids)")
    metrics.add_argument("--benchmark", type=int, metavar="K",
                         help="which benchmark of a GuideLLM file that holds several (0 the first)")
    metrics.add_argument("--json", action="store_true", help="print the summary as JSON")
    metrics.add_argument("--per-request", metavar="FILE.csv", help="write the per-request table")
    metrics.set_defaults(handler=_metrics)

    imports = commands.add_parser("import", help="turn another tool's result (.jsonl, vllm bench, GuideLLM) "
                                                 "into a run folder")
    imports.add_argument("source", help="a .jsonl of timelines, a vllm bench result or a GuideLLM benchmarks .json")
    imports.add_argument("out")
    imports.add_argument("--benchmark", type=int, metavar="K", help="which benchmark of a GuideLLM file (0 the first)")
    imports.set_defaults(handler=_import)

    run = commands.add_parser("run", help="run an experiment config")
    run.add_argument("config", help="experiment YAML (see configs/)")
    run.add_argument("--runtime", choices=["sim", "ray"], help="override the config's runtime")
    run.add_argument("--address", help="a Ray cluster's head HOST:PORT (or 'auto') for --runtime ray "
                                       "(default: ray.address, else a Ray started in-process)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set router.policy=round_robin (repeatable)")
    run.add_argument("--out", help="run folder (default runs/NAME)")
    run.add_argument("--noise-seeds", type=_count, metavar="N", default=0,
                     help="run each variant under step-time noise seeds 0..N-1 (cluster.noise_seed; the workload "
                          "stays) and show every metric's range: which figures are knife-edge")
    run.set_defaults(handler=_run)

    add_calibrate(commands)
    add_harm(commands)
    add_ablate(commands)
    add_sweep(commands)
    add_capacity(commands)
    add_model(commands)
    add_install(commands)
    add_serve(commands)
    add_vllm(commands)

    quick = commands.add_parser("quickstart", help="the quickstart: classic vs smooth goodput routers on a live "
                                                   "local Ray cluster (2 prefill + 2 decode emulated A100s)")
    quick.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    quick.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of configs/sweeps/quickstart.yaml (e.g. workload.requests=100)")
    quick.set_defaults(handler=_quickstart)
    return top


def _expected(exc: Exception) -> bool:
    """Bad input or a cluster that cannot serve: one line, no traceback."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return True
    from cluster.live.raycluster import ClusterError
    from experiments.cli.install import InstallError

    return isinstance(exc, (ClusterError, InstallError))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"pdlab {args.command}: interrupted (Ctrl-C); what was under way is not written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (only the expected kinds are caught; the rest are raised again)
        if os.environ.get("PDLAB_DEBUG") or not _expected(exc):
            raise
        print(f"pdlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
