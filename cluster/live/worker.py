"""A serving worker: hosts an engine behind the engine port and steps it in real time,
handing each step's result to `report` as one message (tokens are batched per step).

Engine time runs at `speedup` times the wall clock, so an `emulated` worker (the model
engine) waits out each modelled step. Back-to-back steps keep to the model's schedule
(the next starts where the last ended, the worker's own bookkeeping absorbed as a
real engine's is in its fitted step times) unless the worker falls behind by more
than `CATCH_UP_S` (a thread descheduled for a few milliseconds on a busy node does not
move the modelled GPU's schedule); then it starts late and the lag shows. A real engine
(`paced = False`) starts each step when the last one is done and ends when its compute does.
Commands that change the batch (new requests, admissions, preemptions, detaching a
migrating request) run at the next step boundary, as in a real engine; their results
ride on the next report as notes. Blocks reserved for incoming KV expire at a
deadline unless committed (the migration watchdog). An idle engine whose state another
thread changed (a release, an abort) reports its load at once. A step that did nothing the driver
must hear of (a real engine waiting on KV in flight) is reported at most every `QUIET_S`.
A real engine's step run right after another counts from the end of that one: the
worker's own work between steps is part of what each step costs.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from cluster.core.request import Request
from cluster.engines.port import Engine, StepResult

CATCH_UP_S = 0.02
QUIET_S = 0.05
YIELD_S = 0.0002


@dataclass
class Report:
    """What a worker tells the driver: a step's result (None when only notes changed),
    notes `(kind, request, value)` from commands, the engine's load after it (and how
    many submitted requests it has taken in), when
    the step ended by the engine's clock and when the report was sent (the worker's
    monotonic seconds)."""
    step: StepResult | None
    notes: list[tuple[str, int, float]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    ended_s: float = 0.0
    sent_s: float = 0.0


class Worker:
    def __init__(self, engine: Engine, report: Callable[[Report], None], speedup: float = 1.0) -> None:
        self.engine, self.report, self.speedup = engine, report, speedup
        self.commands: deque[Callable[[], None]] = deque()
        self.notes: list[tuple[str, int, float]] = []
        self.reservations: dict[int, tuple[int, float, int]] = {}
        self.lock = threading.Lock()
        self.waiting_lock = threading.Lock()
        self.waiting = 0
        self.submitted = 0
        self.wake = threading.Event()
        self.stopped = False
        self.origin = time.monotonic()
        self.last_end: float | None = None
        self.flushed = 0.0
        self.touched = False
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.origin = time.monotonic()
        self.thread.start()

    def now(self) -> float:
        """Engine time: seconds since start, times the speed-up."""
        return (time.monotonic() - self.origin) * self.speedup

    @contextmanager
    def held(self, change: bool = True):
        """The engine's lock, for a thread other than the worker's: the worker yields it
        at its next boundary (a real engine's steps follow each other with no pause,
        and an unfair lock would let the worker take it back every time). With `change`,
        the caller changes the engine's state: an idle worker then reports its load."""
        with self.waiting_lock:
            self.waiting += 1
        try:
            with self.lock:
                yield
                self.touched = self.touched or change
        finally:
            with self.waiting_lock:
                self.waiting -= 1

    def at_boundary(self, command: Callable[[], None]) -> None:
        with self.held():
            self.commands.append(command)
        self.wake.set()

    def submit(self, request: Request) -> None:
        self.at_boundary(lambda: self._add(request))

    def _add(self, request: Request) -> None:
        self.engine.add(request)
        self.submitted += 1

    def note(self, kind: str, request: int, value: float = 0.0) -> None:
        """Add a note to the next report (call with the lock held, as commands are)."""
        self.notes.append((kind, request, value))

    def reserve(self, request: int, blocks: int, deadline: float, ticket: int = 0) -> bool:
        """Reserve blocks for a request's incoming KV until `deadline` (monotonic seconds),
        under the driver's `ticket` for this reservation: one held under another ticket is
        stale (its cancel is still on the way) and is freed."""
        with self.held():
            held = self.reservations.get(request)
            if held is not None and held[2] != ticket:
                self._free(request)
                held = None
            if not self.engine.reserve(blocks):
                return False
            self.reservations[request] = ((held[0] if held else 0) + blocks, deadline, ticket)
        self.wake.set()
        return True

    def take_reservation(self, request: int, ticket: int = 0) -> int | None:
        with self.held():
            held = self.reservations.get(request)
            if held is None or held[2] != ticket:
                return None
            return self.reservations.pop(request)[0]

    def cancel(self, request: int, ticket: int = 0) -> None:
        with self.held():
            held = self.reservations.get(request)
            if held is not None and held[2] == ticket:
                self._free(request)
        self.wake.set()

    def _free(self, request: int) -> None:
        blocks = self.reservations.pop(request)[0]
        self.engine.unreserve(request, blocks)

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=10)

    def _expire(self) -> None:
        now = time.monotonic()
        for request, (blocks, deadline, _) in list(self.reservations.items()):
            if deadline < now:
                del self.reservations[request]
                self.engine.unreserve(request, blocks)
                self.note("reservation_expired", request, blocks)

    def _flush(self, step: StepResult | None) -> None:
        notes, self.notes = self.notes, []
        sent = self.flushed = time.monotonic()
        ended = self.origin + step.end_s / self.speedup if step is not None else sent
        self.report(Report(step, notes, {**self.engine.stats(), "submitted": self.submitted}, ended, sent))

    def _loop(self) -> None:
        while not self.stopped:
            if self.waiting:
                time.sleep(YIELD_S)
            with self.lock:
                while self.commands:
                    self.commands.popleft()()
                self._expire()
                if self.notes:
                    self._flush(None)
                now, previous_end, paced = self.now(), self.last_end, getattr(self.engine, "paced", True)
                behind = now - previous_end if previous_end is not None else None
                on_schedule = paced and behind is not None and behind < CATCH_UP_S * self.speedup
                late = behind if paced and behind is not None and not on_schedule else 0.0
                end = self.engine.begin(previous_end if on_schedule else now)
                self.last_end = end
                if end is None and self.touched:
                    self._flush(None)
                self.touched = False
            if end is None:
                self.wake.wait(0.05 if self.reservations else None)
                self.wake.clear()
                continue
            delay = (end - self.now()) / self.speedup
            if delay > 0:
                time.sleep(delay)
            with self.lock:
                step = self.engine.finish()
                if not paced and previous_end is not None and step.start_s is not None:
                    step.start_s = previous_end
                step.late_s = late
                if step.tokens or step.prefilled or step.finished or step.preempted or step.stored or self.notes \
                        or time.monotonic() - self.flushed > QUIET_S:
                    self._flush(step)
