"""The `model` backend of the engine port: the vLLM-like instance of the simulator with
its iteration-time model, run one step at a time (an `emulated` worker waits out each
step in real time, and its KV is bytes of the modelled size)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from cluster.core.instance import Instance
from cluster.core.request import PREFILL_PIECE, Request
from cluster.core.scheduling import HOST_FULL, InstanceSpec, Outcome
from cluster.engines.kvbytes import EmulatedKV
from cluster.engines.port import StepResult, StepShape
from migration.transport import Packet
from router.snapshot import NO_LIMIT


class ModelEngine:
    """The simulator's instance, one iteration per step: each request in the batch of a
    step gets one token at its end (`tokens` lists them, a request once per token).
    `paced`: its steps take the modelled time, which the worker waits out."""
    paced = True

    def __init__(self, spec: InstanceSpec, kv: EmulatedKV | None = None) -> None:
        self.kv = kv or EmulatedKV(spec.kv_bytes_per_token)
        self.instance = Instance(replace(spec, scheduler=replace(spec.scheduler, max_segment_steps=1)))
        self.instance.choose_victim = self._victim
        self.victim: int | None = None
        self.requests: dict[int, Request] = {}
        self.parked: dict[int, Request] = {}
        self.host: dict[int, tuple[int, np.ndarray]] = {}
        """Parked requests' KV bytes in host memory (their context tokens, the bytes)."""
        self.decoding: list[int] = []
        self.started: list[Outcome] = []
        self.start_s = self.end_s = 0.0
        self.shape: StepShape | None = None

    def add(self, request: Request) -> None:
        self.requests[request.id] = request
        self.instance.enqueue(request)

    def begin(self, now: float) -> float | None:
        outcome = Outcome()
        end = self.instance.schedule(now, outcome)
        self.started.append(outcome)
        segment = self.instance.segment
        self.decoding = list(self.instance.running) if segment is not None and segment.steps else []
        if end is not None:
            working = segment.steps or segment.prefill
            self.start_s, self.end_s, self.shape = now, end, self._shape() if working else None
        return end

    def _shape(self) -> StepShape:
        chunks = self.instance.segment.prefill
        return StepShape(sum(size for _, size in chunks), float(sum(size * (size + r.prefilled) for r, size in chunks)),
                         len(self.decoding), self.instance.batch.context_base if self.decoding else 0)

    def finish(self) -> StepResult:
        chunks = [request for request, _ in self.instance.segment.prefill]
        outcome = self.instance.complete()
        first = [r.id for r in chunks if r.pieces and r.pieces[-1] == (PREFILL_PIECE, self.end_s, 1)]
        preempted = [r.id for early in self.started for r in early.preempted]
        stored = sum(early.stored for early in self.started)
        self.started = []
        return StepResult(self.end_s, self.decoding + first, [r.id for r in outcome.prefilled],
                          [r.id for r in outcome.finished], preempted, start_s=self.start_s, shape=self.shape,
                          stored=stored)

    def abort(self, request_id: int) -> None:
        parked = self.parked.pop(request_id, None)
        self.host.pop(request_id, None)
        if parked is not None:
            self.instance.unpark(parked)
        request = self.requests.pop(request_id, None) or parked
        if request is not None:
            self.instance.remove(request)

    # ---- KV moves and preemption, between steps ---------------------------------
    def reserve(self, blocks: int) -> bool:
        return self.instance.reserve(blocks)

    def unreserve(self, request_id: int, blocks: int) -> None:
        self.instance.unreserve(blocks)

    def export_kv(self, request_id: int, first: int, tokens: int) -> tuple[Packet, np.ndarray]:
        """Bytes standing for tokens [first, first + tokens) of a request's KV, described."""
        return self.kv.packet(request_id, first, tokens)

    def import_kv(self, request_id: int, first: int, data: np.ndarray) -> None:
        """Emulated KV is checked on arrival and needs no keeping."""

    def release(self, request_id: int) -> Request:
        """A request whose KV went elsewhere (handed off, migrated) frees its blocks here."""
        request = self.requests.pop(request_id)
        self.instance.release(request)
        return request

    def admit(self, request: Request, blocks: int) -> None:
        """A request whose KV arrived (`blocks` reserved here) joins the decode batch."""
        self.requests[request.id] = request
        self.instance.admit_decode(request, blocks)

    def detach(self, request_id: int, keep_kv: bool = True) -> Request | None:
        """Stop decoding a request, keeping its KV (a live migration's last stage; a
        recompute migration's abort frees it next); None if it is not decoding here."""
        request = self.requests.get(request_id)
        if request is None or request.id not in self.instance.running:
            return None
        self.instance.detach(request)
        return request

    def reattach(self, request_id: int) -> None:
        """A detached request carries on here (its migration was aborted)."""
        request = self.requests[request_id]
        self.instance.admit_decode(request, request.blocks)

    def prefer_victim(self, request_id: int | None) -> None:
        """Out of KV, preempt this request first (if it is running; else the latest arrival)."""
        self.victim = request_id

    def _victim(self, instance: int, running) -> int | None:
        return self.victim

    def preempt(self, request_id: int, mode: str, now: float) -> float | None:
        """Preempt a decoding request (the router's choice); returns the bytes swapped
        out, None if it is not decoding here, HOST_FULL if it carries on decoding
        because host memory has no room. It stays parked here for `resume`."""
        request = self.requests.get(request_id)
        if request is None or request.id not in self.instance.running:
            return None
        context = self.instance.context_of(request)
        nbytes = self.instance.preempt(request, mode, now)
        if nbytes != HOST_FULL:
            self.parked[request_id] = self.requests.pop(request_id)
            if mode == "swap":
                self.host[request_id] = (context, self.kv.payload(request_id, 0, context).copy())
        return nbytes

    def resume(self, request_id: int) -> bool:
        request = self.parked.pop(request_id, None)
        if request is None:
            return False
        stored = self.host.pop(request_id, None)
        if stored is not None and not np.array_equal(stored[1], self.kv.payload(request_id, 0, stored[0])):
            raise RuntimeError(f"request {request_id}: its KV came back from host memory changed")
        self.requests[request_id] = request
        if request.blocks:
            self.instance.resume_swapped(request)
        else:
            self.instance.enqueue(request)
        return True

    def context_of(self, request_id: int) -> int:
        request = self.requests[request_id]
        if request.id in self.instance.running:
            return self.instance.context_of(request)
        return request.context

    def stats(self) -> dict:
        instance = self.instance
        queued, tokens, running = instance.load()
        context = instance.context_now()
        return {"free_blocks": instance.free_soon, "total_blocks": instance.blocks.total, "queued": queued,
                "queued_tokens": tokens, "running": running, "context_tokens": context,
                "step_time_s": instance.perf.decode_time(running, context) if running else 0.0,
                "host_free_blocks": min(instance.host.free, NO_LIMIT)}
