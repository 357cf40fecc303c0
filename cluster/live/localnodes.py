"""A multi-node Ray cluster on this machine: a head and worker nodes started with
`ray start --block` as separate process groups on loopback, each with its own CPUs,
so that spreading work over nodes and losing a node mid-run can be tried (and
tested) without a second machine. A node is stopped by killing its process group,
as a machine that dies would be."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from cluster.live.raycluster import LOCAL_RAY

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
STARTED = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def client_env() -> dict[str, str]:
    """The environment for a process that joins or drives these nodes (no auth token)."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled"}


class LocalNodes:
    """`with LocalNodes([1, 1]) as nodes:` a head with 1 CPU and one more node with 1 CPU;
    `nodes.address` is the head's HOST:PORT."""

    def __init__(self, cpus: list[int]) -> None:
        if not cpus:
            raise ValueError("cpus: expected at least one node (the head)")
        self.cpus = cpus
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.processes: list[subprocess.Popen | None] = []

    def __enter__(self) -> LocalNodes:
        try:
            for index, cpus in enumerate(self.cpus):
                self.processes.append(self._start(index, cpus))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, index: int, cpus: int) -> subprocess.Popen:
        """Start node `index` and wait until `ray start` says it runs (it has joined the head)."""
        ray = str(Path(sys.executable).with_name("ray"))
        command = [ray, "start", "--block", "--node-ip-address", LOOPBACK, "--num-cpus", str(cpus),
                   "--disable-usage-stats", "--dashboard-agent-listen-port", str(free_port())]
        if index == 0:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--ray-client-server-port", str(free_port())]
        else:
            command += ["--address", self.address]
        settings = {f"RAY_{key}": str(value) for key, value in LOCAL_RAY.items()}
        process = subprocess.Popen(command, env={**client_env(), **settings}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        started, output = threading.Event(), []

        def follow() -> None:
            for line in process.stdout:
                output.append(line)
                if STARTED in line:
                    started.set()
            started.set()

        threading.Thread(target=follow, daemon=True).start()
        if not started.wait(START_TIMEOUT_S) or process.poll() is not None:
            self.processes.append(process)
            raise RuntimeError(f"local Ray node {index} did not start in {START_TIMEOUT_S:g} s:\n" +
                               "".join(output[-20:]))
        return process

    def stop_node(self, index: int) -> None:
        """Kill node `index` (0 is the head) and every process it started."""
        process = self.processes[index]
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            self.processes[index] = None

    def close(self) -> None:
        for index in reversed(range(len(self.processes))):
            self.stop_node(index)
