"""`pdlab serve CONFIG`: the config's live cluster behind an OpenAI-compatible server
(loopback by default) until Ctrl-C; then its run folder, scored as `pdlab run`'s."""
from __future__ import annotations

import argparse
from pathlib import Path


def _handle(args: argparse.Namespace) -> int:
    from experiments.cli.show import print_summaries
    from experiments.config.experiment import load_config
    from experiments.runs.imports import read_any
    from experiments.scoring.metrics import run_slos, score
    from experiments.serve.server import ServeOptions, serve

    overrides = list(args.set) + ([f"ray.address={args.address}"] if args.address else [])
    config = load_config(args.config, overrides)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port: expected a port number in 1..65535, got {args.port}")
    out = Path(args.out or Path("runs") / "serve" / config.name)
    options = ServeOptions(args.host, args.port, out, args.model, args.tokenizer, args.drain_s)
    path = serve(config, options, lambda line: print(line, flush=True))
    run = read_any(path)
    print(f"wrote run {path} ({len(run.requests)} requests)")
    if len(run.requests):
        slo, tenants = run_slos(run.meta)
        print_summaries({"served": score(run, slo, tenant_slos=tenants)[1]})
    return 0


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="serve a config's live cluster behind an OpenAI-compatible HTTP API")
    serve.add_argument("config", help="experiment YAML: its cluster, router, ray and slo sections (e.g. configs/serve.yaml)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="the model name clients send (default the config's cluster.model)")
    serve.add_argument("--tokenizer", help="a Hugging Face tokenizer folder (default: a real engine's model folder's, "
                                           "else one made locally for the model's vocabulary, in OUT/tokenizer)")
    serve.add_argument("--address", help="a Ray cluster's head HOST:PORT (default ray.address, else Ray in-process)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    serve.add_argument("--drain-s", type=float, default=5.0,
                       help="on stop, seconds open streams may finish before they are aborted (default 5)")
    serve.add_argument("--out", help="run folder written on stop (default runs/serve/NAME)")
    serve.set_defaults(handler=_handle)
