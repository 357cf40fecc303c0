"""`pdlab model make FOLDER`: a small Llama-shaped model with seeded random weights,
for the `hf` and `vllm` engines on machines without a model hub."""
from __future__ import annotations

import argparse


def _make(args: argparse.Namespace) -> int:
    from cluster.engines.modelfiles import make_model

    folder = make_model(args.folder, args.model, args.seed, args.max_len)
    print(f"wrote {args.model} with random weights (seed {args.seed}) to {folder}")
    return 0


def add_parser(commands) -> None:
    model = commands.add_parser("model", help="make a small model locally (random weights) for real engines")
    actions = model.add_subparsers(dest="action", required=True)
    make = actions.add_parser("make", help="write a Llama-shaped model with seeded random weights to FOLDER")
    make.add_argument("folder")
    make.add_argument("--model", default="tiny-llama",
                      help="a model spec of configs/models/ or a spec YAML (default tiny-llama; real sizes work "
                           "but are large)")
    make.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    make.add_argument("--max-len", type=int, default=4096, help="max_position_embeddings (default 4096)")
    make.set_defaults(handler=_make)
