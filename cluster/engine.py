"""The engine port: what a worker needs from the engine it hosts, one step at a time,
so that a live runtime streams tokens per step and one router drives any backend.

`begin(now)` starts the next step and says when it will end; `finish()` returns what
that step did. `ModelEngine` is the `model` backend: the vLLM-like instance of the
simulator with its iteration-time model, run one step at a time (the `emulated`
workers wait out each step in real time; a `vllm` backend runs a real engine step).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from cluster.instance import Instance
from cluster.request import PREFILL_PIECE, Request
from cluster.scheduling import Outcome, SchedulerConfig


@dataclass
class StepResult:
    end_s: float
    tokens: list[int] = field(default_factory=list)
    prefilled: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)


class Engine(Protocol):
    def add(self, request: Request) -> None: ...

    def begin(self, now: float) -> float | None: ...

    def finish(self) -> StepResult: ...

    def abort(self, request_id: int) -> None: ...

    def stats(self) -> dict: ...


class ModelEngine:
    """The simulator's instance, one iteration per step: each request in the batch of a
    step gets one token at its end (`tokens` lists them, a request once per token)."""

    def __init__(self, index: int, role: int, model, config: SchedulerConfig, total_blocks: int,
                 kv_bytes_per_token: float, swap_bandwidth: float) -> None:
        single = replace(config, max_segment_steps=1)
        self.instance = Instance(index, role, model, single, total_blocks, kv_bytes_per_token, swap_bandwidth)
        self.requests: dict[int, Request] = {}
        self.batch: list[int] = []
        self.started: list[Outcome] = []
        self.end_s = 0.0

    def add(self, request: Request) -> None:
        self.requests[request.id] = request
        self.instance.enqueue(request)

    def begin(self, now: float) -> float | None:
        outcome = Outcome()
        end = self.instance.plan(now, outcome)
        self.started.append(outcome)
        segment = self.instance.segment
        self.batch = list(self.instance.running) if segment is not None and segment.steps else []
        if end is not None:
            self.end_s = end
        return end

    def finish(self) -> StepResult:
        chunks = [request for request, _ in self.instance.segment.prefill]
        outcome = self.instance.complete()
        first = [r.id for r in chunks if r.pieces and r.pieces[-1] == (PREFILL_PIECE, self.end_s, 1)]
        preempted = [r.id for early in self.started for r in early.preempted]
        self.started = []
        return StepResult(self.end_s, self.batch + first, [r.id for r in outcome.prefilled],
                          [r.id for r in outcome.finished], preempted)

    def abort(self, request_id: int) -> None:
        request = self.requests.pop(request_id)
        self.instance.remove(request)

    def stats(self) -> dict:
        queued, tokens, running = self.instance.load()
        return {"free_blocks": self.instance.free, "total_blocks": self.instance.total_blocks,
                "queued": queued, "queued_tokens": tokens, "running": running}
