"""A watcher beside a Ray that pdlab starts in-process. Ray cleans up after a driver
that exits, but not after one killed outright (SIGKILL, the OOM killer): its dashboard
and runtime-env agents then live on, and they ignore SIGTERM. The watcher follows the
driver's descendants and kills those still alive once the driver is gone.

Run as `python -m cluster.live.reaper PID` with the driver holding its stdin: the pipe
closing is the driver's end, however it came."""
from __future__ import annotations

import os
import select
import subprocess
import sys

import psutil

POLL_S = 1.0
_watcher: subprocess.Popen | None = None


def watch_this_process() -> None:
    """Start the watcher for this process (once)."""
    global _watcher
    if _watcher is None or _watcher.poll() is not None:
        _watcher = subprocess.Popen([sys.executable, "-m", "cluster.live.reaper", str(os.getpid())],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)


def descendants(process: psutil.Process) -> dict[int, psutil.Process]:
    """Its descendants but this process (the watcher is one of them)."""
    try:
        return {child.pid: child for child in process.children(recursive=True) if child.pid != os.getpid()}
    except psutil.Error:
        return {}


def reap(driver_pid: int, stdin_fd: int = 0) -> list[int]:
    """Follow `driver_pid`'s descendants until `stdin_fd` closes; kill those left.
    Returns the pids killed."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    known: dict[int, psutil.Process] = {}
    while True:
        known.update(descendants(driver))
        ready, _, _ = select.select([stdin_fd], [], [], POLL_S)
        if ready and not os.read(stdin_fd, 4096):
            break
    killed = []
    for pid, process in known.items():
        try:
            if process.is_running():
                process.kill()
                killed.append(pid)
        except psutil.Error:
            pass
    return killed


if __name__ == "__main__":
    reap(int(sys.argv[1]))
