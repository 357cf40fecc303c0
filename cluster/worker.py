"""A serving worker: hosts an engine behind the engine port and steps it in real time,
handing each step's result to `report` as one message (tokens are batched per step).

Engine time runs at `speedup` times the wall clock, so an `emulated` worker (the model
engine) waits out each modelled step, and its own overheads show as they would. Work
submitted meanwhile joins at the next step boundary, as in a real engine.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from cluster.engine import Engine, StepResult
from cluster.request import Request


class Worker:
    def __init__(self, engine: Engine, report: Callable[[StepResult], None], speedup: float = 1.0) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup: expected a number > 0, got {speedup!r}")
        self.engine, self.report, self.speedup = engine, report, speedup
        self.inbox: deque[Request] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = False
        self.origin = time.monotonic()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.origin = time.monotonic()
        self.thread.start()

    def now(self) -> float:
        """Engine time: seconds since start, times the speed-up."""
        return (time.monotonic() - self.origin) * self.speedup

    def submit(self, request: Request) -> None:
        with self.lock:
            self.inbox.append(request)
        self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stopped:
            with self.lock:
                while self.inbox:
                    self.engine.add(self.inbox.popleft())
            end = self.engine.begin(self.now())
            if end is None:
                self.wake.wait()
                self.wake.clear()
                continue
            delay = (end - self.now()) / self.speedup
            if delay > 0:
                time.sleep(delay)
            self.report(self.engine.finish())


class WorkerActor:
    """A worker in a Ray actor (`ray.remote(WorkerActor)`): its step results go to
    `outbox.put` (e.g. a `ray.util.queue.Queue` the driver reads)."""

    def __init__(self, engine: Engine, outbox, speedup: float = 1.0) -> None:
        self.worker = Worker(engine, outbox.put, speedup)
        self.worker.start()

    def submit(self, request: Request) -> None:
        self.worker.submit(request)

    def stats(self) -> dict:
        return self.worker.engine.stats()

    def stop(self) -> None:
        self.worker.stop()
