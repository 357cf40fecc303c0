"""The engine port: what a worker needs from the engine it hosts, one step at a time,
so that a live runtime streams tokens per step and one router drives any backend.

`begin(now)` starts the next step and says when it will end; `finish()` returns what
that step did. The backends: `cluster.engines.model` (the simulator's instance, its
steps waited out), `hf_engine` and `vllm_engine` (real engines).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cluster.core.request import Request
from migration.transport import Packet


class KVNotReady(Exception):
    """The engine is still preparing the KV asked for (ask again shortly)."""


@dataclass(frozen=True)
class StepShape:
    """What one iteration computed, in the terms of the iteration-time model: prompt
    tokens prefilled (and the sum of each chunk's tokens times the context it attends
    to), and the decode batch with the KV tokens it reads."""
    prefill_tokens: int = 0
    prefill_tokens_sq: float = 0.0
    decode_batch: int = 0
    decode_context: int = 0


@dataclass
class StepResult:
    end_s: float
    tokens: list[int] = field(default_factory=list)
    prefilled: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    start_s: float | None = None
    shape: StepShape | None = None
    stored: int = 0
    """GPU blocks freed by parked requests' copies to host memory finishing."""
    late_s: float = 0.0
    """How long after the step before this one started, when a paced engine fell behind
    its schedule by more than the worker's catch-up (0 on schedule or after idling)."""


class Engine(Protocol):
    paced: bool
    """Its steps take a modelled time that the worker waits out (else they take what they take)."""
    requests: dict[int, Request]
    """The requests it holds, by id."""

    def add(self, request: Request) -> None: ...

    def begin(self, now: float) -> float | None: ...

    def finish(self) -> StepResult: ...

    def abort(self, request_id: int) -> None: ...

    def reserve(self, blocks: int) -> bool: ...

    def unreserve(self, request_id: int, blocks: int) -> None: ...

    def export_kv(self, request_id: int, first: int, tokens: int) -> tuple[Packet, np.ndarray]: ...

    def import_kv(self, request_id: int, first: int, data: np.ndarray) -> None: ...

    def release(self, request_id: int) -> Request: ...

    def admit(self, request: Request, blocks: int) -> None: ...

    def detach(self, request_id: int, keep_kv: bool = True) -> Request | None: ...

    def reattach(self, request_id: int) -> None: ...

    def prefer_victim(self, request_id: int | None) -> None: ...

    def preempt(self, request_id: int, mode: str, now: float) -> float | None: ...

    def resume(self, request_id: int) -> bool: ...

    def context_of(self, request_id: int) -> int: ...

    def stats(self) -> dict: ...
