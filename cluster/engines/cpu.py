"""CPU threads of a real engine. Its steps run on the worker's thread, not the one
that built it, and each thread has its own OpenMP settings: unset, a thread would
start a team of one thread per core, which on a machine shared by several engines
(each pinned to its core) spins against the others. `use_threads` sets them once
per calling thread."""
from __future__ import annotations

import threading

_configured = threading.local()


def use_threads(threads: int) -> None:
    if getattr(_configured, "threads", None) != threads:
        import torch

        torch.set_num_threads(threads)
        _configured.threads = threads
