"""Driving a served cluster from outside, as its users do: start `pdlab serve` as a
process and wait for it to answer, run `vllm bench serve` against it (through the
`pdlab vllm` shim), stop it with SIGINT so that it writes its run folder. Used by the
end-to-end tests and `benchmarks/bench_serve.py`."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    out: Path
    started_s: float = 0.0

    @property
    def tokenizer(self) -> Path:
        return self.out / "tokenizer"

    def stop(self, timeout_s: float = 120.0) -> tuple[int, str, str]:
        """SIGINT, then its exit code, stdout and stderr."""
        self.process.send_signal(signal.SIGINT)
        stdout, stderr = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, stdout, stderr


def start(config: str | Path, out: Path, *args: str, timeout_s: float = 120.0) -> Served:
    """`pdlab serve CONFIG` on a free loopback port, once it answers /health."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "experiments.cli.main", "serve", str(config), "--port", str(port),
                                "--out", str(out), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    served, begun = Served(process, f"http://127.0.0.1:{port}", Path(out)), time.monotonic()
    while time.monotonic() - begun < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"pdlab serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{served.url}/health", timeout=1.0).status_code == 200:
                served.started_s = time.monotonic() - begun
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"pdlab serve did not answer /health within {timeout_s:g} s")


def vllm_bench(served: Served, result: Path, requests: int, rate: float, *, input_len: int = 64,
               output_len: int = 24, prefix: str = "bench-", model: str = "Llama-3.1-8B", extra: tuple = (),
               timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """`vllm bench serve` (random prompts, Poisson arrivals at `rate`, request ids
    `prefix` + index) against the server; its detailed result in `result`."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli.main", "vllm", "bench", "serve", "--backend", "openai",
         "--base-url", served.url, "--model", model, "--tokenizer", str(served.tokenizer),
         "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
         "--num-prompts", str(requests), "--request-rate", str(rate), "--seed", "0", "--ignore-eos",
         "--request-id-prefix", prefix, "--save-result", "--save-detailed", "--result-dir", str(result.parent),
         "--result-filename", result.name, "--disable-tqdm", "--ready-check-timeout-sec", "60", *extra],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
