"""The live runtime's driver: an open-loop client and the control plane over worker actors.

Requests are submitted at their arrival times on one client clock, and every token
is stamped on that clock when its step's report reaches the driver. The control
plane (`cluster.core.control`) is the simulator's, called at the same logical events
with the same snapshot; its hooks here become actor calls. Asynchronous calls (KV
pulls) are awaited with a deadline; a worker that dies has its requests re-queued
for recompute, recorded.
"""
from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cluster.core.control import ControlPlane
from cluster.core.recorder import Recorder
from cluster.core.request import ABORTED, DECODING, HANDOFF, PREFILLING, WAITING, Request
from cluster.core.runtime import Runtime
from cluster.core.setup import RunSetup
from cluster.live.actor import LinkTime, Pulled
from cluster.live.pauses import few_pauses
from cluster.live.worker import Report
from router import events

POLL_S = 1.0
ANSWER_MARGIN_S = 5.0


@dataclass
class LiveOptions:
    """`stamp`: a token's time is when its step ended by the engine's clock ("step":
    the modelled end for an emulated engine, the measured one for a real engine, put on
    the client clock: same-node clocks are shared, others offset by a measured skew),
    or when its report reached the driver ("receipt", adding the delivery lag).
    `paced_transfers`: emulated KV transfers wait out their modelled time; a real
    engine's take what they take. `staged_kv`: the engine can export a decoding
    request's KV in stages while it decodes (else a live migration stops the request
    and moves its KV in one stage). `report_batch_s`: how
    long a worker may hold plain decode-step reports to send them together."""
    speedup: float = 1.0
    transfer_timeout_s: float = 30.0
    stall_timeout_s: float = 120.0
    stamp: str = "step"
    transport: str = "object_store"
    paced_transfers: bool = True
    staged_kv: bool = True
    report_batch_s: float = 0.0


def _reason(result) -> str:
    """What a KV pull's answer says: "" when the KV arrived, else why not."""
    import ray

    if isinstance(result, Pulled):
        return "" if result.ok else result.reason
    if isinstance(result, TimeoutError):
        return "timeout"
    if isinstance(result, ray.exceptions.RayActorError):
        return "target_dead"
    return f"transport ({type(result).__name__})"


class LiveRuntime(Runtime):
    def __init__(self, setup: RunSetup, actors: list, options: LiveOptions,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.setup, self.actors, self.options, self.progress = setup, actors, options, progress
        self.staged_kv = options.staged_kv
        self.control = ControlPlane(setup, self)
        self.requests = self.control.requests
        self.times: dict[int, array] = {}
        self.decoding_ids: list[set[int]] = [set() for _ in actors]
        self.submits, self.unseen = [0] * len(actors), [deque() for _ in actors]
        self.reserving: dict[int, int] = {}
        self.tickets: dict[int, int] = {}
        self.ticket_count = 0
        self.polls: dict = {}
        self.pending: dict = {}
        self.lag = array("d")
        self.origin = time.monotonic()
        self.last_progress = self.origin
        self.nodes, self.skew = [""] * len(actors), [0.0] * len(actors)
        self.arrivals = deque(sorted(setup.requests, key=lambda r: (r.arrival, r.id)))

    @property
    def record(self) -> Recorder:
        return self.control.record

    def link(self, source: int, target: int) -> LinkTime:
        if not self.options.paced_transfers:
            return LinkTime(0.0, 0.0)
        setup = self.setup
        links = [setup.links.links[name] for name in setup.path(source, target)]
        return LinkTime(sum(link.latency_s for link in links) + setup.stage_overhead_s(),
                        setup.kv_bytes_per_token / min(link.bandwidth for link in links))

    def pull(self, request_id: int, source: int, target: int, first: int, tokens: int | None, reserve: int,
             final: bool):
        """Have `source` export a request's KV and `target` take it in; the target's answer's ref."""
        link, timeout = self.link(source, target), self.options.transfer_timeout_s
        ticket = self.tickets.get(request_id, 0)
        if self.options.transport == "shm" and self.nodes[source] == self.nodes[target]:
            return self.actors[target].pull.remote(request_id, [self.actors[source], first, tokens], reserve, final,
                                                   link, timeout, ticket=ticket)
        direct = self.options.transport in ("gloo", "nccl")
        exported = self.actors[source].export_kv.remote(request_id, first, tokens, final, target if direct else None)
        return self.actors[target].pull.remote(request_id, [exported], reserve, final, link, timeout,
                                               source if direct else None, ticket)

    def call(self, ref, callback: Callable[[object], None], timeout_s: float | None = None) -> None:
        """Await `ref` in the loop; `callback` gets its value, or the exception it raised."""
        deadline = time.monotonic() + (timeout_s or self.options.transfer_timeout_s)
        self.pending[ref] = (deadline, callback)

    # ---- the loop ---------------------------------------------------------------
    def run(self) -> Recorder:
        self.nodes, self.skew = zip(*(self._skew(actor) for actor in self.actors))
        for index, actor in enumerate(self.actors):
            self.polls[actor.poll.remote(POLL_S, self.options.report_batch_s)] = index
        with few_pauses():
            self.origin = self.last_progress = time.monotonic()
            self._loop(self.setup.tick_s)
        self.record.close_live(self.now(), self.requests.values(), self.times)
        return self.record

    def _loop(self, tick: float | None) -> None:
        import ray

        setup, control = self.setup, self.control
        while self.serving():
            now = self.now()
            if now >= setup.horizon_s:
                break
            self.arrive(now)
            if tick and now >= tick:
                tick = now + setup.tick_s
                control.decide(events.TICK)
            wake = min(self.next_arrival_s(), tick or np.inf, setup.horizon_s)
            timeout = min(max(0.0, (wake - self.now()) / self.options.speedup), 0.25)
            ready, _ = ray.wait([*self.polls, *self.pending], num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait([*self.polls, *self.pending], num_returns=len(self.polls) + len(self.pending),
                                    timeout=0)
            for ref in ready:
                self._ready(ref)
            self._watch()

    # ---- where requests come from (a server's come as its clients send them) ----------
    def serving(self) -> bool:
        return self.control.unfinished > 0

    def arrive(self, now: float) -> None:
        """Hand the control plane the requests that have arrived by `now`."""
        arrivals = self.arrivals
        while arrivals and arrivals[0].arrival <= now:
            request = arrivals.popleft()
            self.times[request.id] = array("d")
            self.control.arrive(request)

    def next_arrival_s(self) -> float:
        return self.arrivals[0].arrival if self.arrivals else np.inf

    def delivered(self, request_ids: list[int]) -> None:
        """These requests were each given a token (the last of `times`, `output`)."""

    @staticmethod
    def _skew(actor) -> tuple[str, float]:
        """The worker's node, and the seconds its monotonic clock is ahead of the driver's:
        0 on this node, else estimated from the fastest of a few round trips."""
        import ray

        here = ray.get_runtime_context().get_node_id()
        samples = []
        for _ in range(5):
            before = time.monotonic()
            node, clock = ray.get(actor.clock.remote())
            after = time.monotonic()
            if node == here:
                return node, 0.0
            samples.append((after - before, clock - (before + after) / 2))
        return node, min(samples)[1]

    def _ready(self, ref) -> None:
        import ray

        if ref in self.polls:
            index = self.polls.pop(ref)
            try:
                reports = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self.fault(index, f"worker died: {type(exc).__name__}")
                return
            self.polls[self.actors[index].poll.remote(POLL_S, self.options.report_batch_s)] = index
            self._reports(index, reports)
            return
        _, callback = self.pending.pop(ref)
        try:
            value = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 (a failed call is handed to its callback, recorded there)
            value = exc
        callback(value)

    def _watch(self) -> None:
        wall = time.monotonic()
        for ref, (deadline, callback) in list(self.pending.items()):
            if deadline < wall:
                del self.pending[ref]
                callback(TimeoutError("no answer before the deadline"))
        if not self.control.unfinished:
            self.last_progress = wall
        elif wall - self.last_progress > self.options.stall_timeout_s:
            for request in self.requests.values():
                if request.arrival <= self.now():
                    self.control.end(request, ABORTED, "stalled")
            self.last_progress = wall

    def fault(self, index: int, reason: str) -> None:
        """A worker is gone: it is polled no more, and its requests are re-queued."""
        for ref in [r for r, i in self.polls.items() if i == index]:
            del self.polls[ref]
        self.control.fault(index, reason)

    # ---- reports from workers -------------------------------------------------------
    def _reports(self, index: int, reports: list[Report]) -> None:
        now, happened = self.now(), set()
        wall, skew, speedup = time.monotonic(), self.skew[index], self.options.speedup
        for report in reports:
            self.lag.append(wall - (report.sent_s - skew))
            if report.step is not None:
                ended = report.ended_s - skew
                stamp = now if self.options.stamp == "receipt" else min(now, (ended - self.origin) * speedup)
                happened |= self._step(index, report.step, stamp)
            for kind, request_id, value in report.notes:
                if kind == "preempted":
                    self.control.preempt_done(request_id, value)
                elif kind == "detached":
                    self.control.detach_done(request_id, int(value))
        if reports:
            self._sync(index, reports[-1].stats)
        if events.PREFILL_DONE in happened:
            self.control.decide(events.PREFILL_DONE)
        elif events.FINISHED in happened:
            self.control.decide(events.FINISHED)
        elif events.STORED in happened:
            self.control.decide(events.STORED)

    def _step(self, index: int, step, now: float) -> set[str]:
        control, happened = self.control, set()
        if step.shape is not None and step.start_s is not None:
            self.record.step(index, now, step.end_s - step.start_s, step.shape, step.late_s)
        for request_id, token in zip(step.tokens, step.token_ids):
            self.requests[request_id].output.append(token)
        slo = control.views.slo
        for request_id in step.tokens:
            request = self.requests[request_id]
            self.times[request_id].append(now)
            slo.add_token(request.slot, now)
            if request.state in (WAITING, PREFILLING):
                self.place(request, DECODING, index)
        if step.tokens:
            self.delivered(step.tokens)
        for request_id in step.preempted:
            self.place(self.requests[request_id], WAITING, index)
            control.engine_preempted(self.requests[request_id], index, "recompute")
        for request_id in step.prefilled:
            request = self.requests[request_id]
            self.place(request, HANDOFF, index)
            control.prefilled(request, index)
            happened.add(events.PREFILL_DONE)
        for request_id in step.finished:
            if not self.requests[request_id].final:
                control.finished(self.requests[request_id], index)
            happened.add(events.FINISHED)
        if step.stored:
            happened.add(events.STORED)
        return happened

    def _sync(self, index: int, stats: dict) -> None:
        """The worker's load as it reported it, plus what was sent after (a report in
        flight must not erase requests the router just sent there)."""
        table, unseen = self.setup.table, self.unseen[index]
        for column in ("free_blocks", "queued", "queued_tokens", "running", "context_tokens", "step_time_s"):
            getattr(table, column)[index] = stats[column]
        table.host_free_blocks[index] = stats.get("host_free_blocks", 0)
        while len(unseen) > self.submits[index] - stats["submitted"]:
            unseen.popleft()
        table.queued[index] += len(unseen)
        table.queued_tokens[index] += sum(unseen)

    # ---- the control plane's hooks --------------------------------------------------------
    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.options.speedup

    def busy(self) -> list[int]:
        return [i for i, ids in enumerate(self.decoding_ids) if ids]

    def decoding(self, instance: int) -> np.ndarray:
        ids = self.decoding_ids[instance]
        return np.fromiter((self.requests[r].slot for r in ids), np.int64, len(ids))

    def context_of(self, request: Request) -> int:
        return request.prompt + max(len(self.times[request.id]) - 1, 0)

    def place(self, request: Request, state: str, instance: int) -> None:
        if request.state == DECODING and request.instance >= 0:
            self.decoding_ids[request.instance].discard(request.id)
        request.state, request.instance = state, instance
        if state == DECODING:
            self.decoding_ids[instance].add(request.id)

    def enqueue(self, request: Request, instance: int) -> None:
        spec = Request(request.id, request.tenant, request.arrival, request.prompt, request.max_tokens,
                       generated=len(self.times[request.id]), output=list(request.output),
                       prompt_ids=request.prompt_ids)
        self.actors[instance].submit.remote(spec)
        self.submits[instance] += 1
        self.unseen[instance].append(spec.to_prefill)
        self.place(request, WAITING, instance)
        table = self.setup.table
        table.queued[instance] += 1
        table.queued_tokens[instance] += spec.to_prefill

    def decode_here(self, request: Request) -> None:
        self.actors[request.instance].decode_here.remote(request.id)
        self.place(request, DECODING, request.instance)

    def reserve(self, request: Request, instance: int, blocks: int) -> bool:
        """As the driver sees the target; its worker reserves the blocks when the KV comes,
        under a ticket that tells this reservation from an earlier one being cancelled
        (a worker's calls may run out of order)."""
        table = self.setup.table
        if table.free_blocks[instance] - blocks < table.watermark_blocks[instance]:
            return False
        table.free_blocks[instance] -= blocks
        self.reserving[request.id] = self.reserving.get(request.id, 0) + blocks
        if request.id not in self.tickets:
            self.ticket_count += 1
            self.tickets[request.id] = self.ticket_count
        return True

    def cancel(self, request: Request, instance: int, blocks: int) -> None:
        self.reserving.pop(request.id, None)
        ticket = self.tickets.pop(request.id, 0)
        if self.setup.table.alive[instance]:
            self.actors[instance].cancel.remote(request.id, ticket)

    def copy_kv(self, request: Request, source: int, target: int, first: int, tokens: int, final: bool,
                move: int) -> None:
        ref = self.pull(request.id, source, target, first, None if final else tokens,
                        self.reserving.pop(request.id, 0), final)
        self.call(ref, lambda result: self.control.copied(request.id, move, _reason(result),
                                                           self._arrived(target, result)),
                  self.options.transfer_timeout_s + ANSWER_MARGIN_S)

    def _arrived(self, target: int, result) -> float | None:
        """When a pull's KV was in, on the client clock (its answer comes a little later)."""
        if not isinstance(result, Pulled) or not result.ok or not result.done_s:
            return None
        return min(self.now(), (result.done_s - self.skew[target] - self.origin) * self.options.speedup)

    def admit(self, request: Request, instance: int, blocks: int) -> None:
        self.tickets.pop(request.id, None)
        self.place(request, DECODING, instance)

    def release(self, request: Request, instance: int) -> None:
        self.actors[instance].release.remote(request.id)

    def preempt(self, request: Request, mode: str) -> None:
        self.actors[request.instance].preempt.remote(request.id, mode)

    def detach(self, request: Request, keep_kv: bool) -> None:
        self.actors[request.instance].detach.remote(request.id, keep_kv=keep_kv)

    def reattach(self, request: Request, instance: int) -> None:
        if self.setup.table.alive[instance]:
            self.actors[instance].reattach.remote(request.id)
            self.place(request, DECODING, instance)

    def resume(self, request: Request, instance: int) -> None:
        self.actors[instance].resume.remote(request.id)
        self.place(request, WAITING, instance)

    def drop(self, request: Request, instance: int) -> None:
        if instance >= 0 and self.setup.table.alive[instance]:
            self.actors[instance].abort.remote(request.id)

    def prefer_victim(self, instance: int, request_id: int | None) -> None:
        self.actors[instance].prefer_victim.remote(request_id)

    def ended(self, request: Request) -> None:
        self.last_progress = time.monotonic()
        if self.progress:
            self.progress(len(self.requests) - self.control.unfinished, len(self.requests))
