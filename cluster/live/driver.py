"""The live runtime's driver: an open-loop client and the router over worker actors.

Requests are submitted at their arrival times on one client clock, and every token
is stamped on that clock when its step's report reaches the driver. The router is
the simulator's, called at the same logical events with the same snapshot; its
actions become actor calls. Asynchronous calls (KV pulls) are awaited with a
deadline; a worker that dies has its requests re-queued for recompute, recorded.
"""
from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cluster.live.actor import LinkTime
from cluster.live.moves import LiveMoves
from cluster.core.recorder import Recorder
from cluster.core.request import DECODING, FINISHED, HANDOFF, PREFILLING, REJECTED, WAITING, Request
from cluster.sim.simulator import Plan
from cluster.live.worker import Report
from router.actions import Dispatch, Handoff, Migrate, Preempt, Reject, Resume, live_instance, take_waiting
from router.snapshot import DECODE, PREFILL, RequestView, Snapshot
from router.tracker import RequestTracker

POLL_S = 1.0


STAMPS = ("step", "receipt")


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


class LiveRuntime:
    def __init__(self, plan: Plan, actors: list, options: LiveOptions,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.plan, self.actors, self.options, self.progress = plan, actors, options, progress
        self.requests = {r.id: r for r in plan.requests}
        self.times: dict[int, array] = {}
        self.block_size = plan.table.view.block_size
        self.record = Recorder()
        self.to_dispatch: dict[int, Request] = {}
        self.to_hand_off: dict[int, Request] = {}
        self.transfers: dict[int, int] = {}
        self.running: list[set[int]] = [set() for _ in actors]
        self.submits, self.unseen = [0] * len(actors), [deque() for _ in actors]
        self.polls: dict = {}
        self.pending: dict = {}
        self.moves = LiveMoves(self)
        self.decisions = 0
        self.lag = array("d")
        self.unfinished = len(self.requests)
        self.origin = time.monotonic()
        self.last_progress = self.origin
        self.nodes, self.skew = [""] * len(actors), [0.0] * len(actors)

    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.options.speedup

    def link(self, source: int, target: int) -> LinkTime:
        if not self.options.paced_transfers:
            return LinkTime(0.0, 0.0)
        links = [self.plan.links.links[name] for name in self.plan.path(source, target)]
        return LinkTime(sum(link.latency_s for link in links) + self.plan.cost.stage_overhead_s,
                        self.plan.kv_bytes_per_token / min(link.bandwidth for link in links))

    def pull(self, request_id: int, source: int, target: int, first: int, tokens: int | None, reserve: int,
              final: bool):
        """Have `source` export a request's KV and `target` take it in; the target's answer's ref."""
        link, timeout = self.link(source, target), self.options.transfer_timeout_s
        if self.options.transport == "shm" and self.nodes[source] == self.nodes[target]:
            return self.actors[target].pull.remote(request_id, [self.actors[source], first, tokens], reserve, final,
                                                   link, timeout)
        direct = self.options.transport in ("gloo", "nccl")
        exported = self.actors[source].export_kv.remote(request_id, first, tokens, final, target if direct else None)
        return self.actors[target].pull.remote(request_id, [exported], reserve, final, link, timeout,
                                               source if direct else None)

    def call(self, ref, callback: Callable[[object], None], timeout_s: float | None = None) -> None:
        """Await `ref` in the loop; `callback` gets its value, or the exception it raised."""
        deadline = time.monotonic() + (timeout_s or self.options.transfer_timeout_s)
        self.pending[ref] = (deadline, callback)

    # ---- the loop ---------------------------------------------------------------
    def run(self) -> Recorder:
        import ray

        arrivals = sorted(self.plan.requests, key=lambda r: (r.arrival, r.id))
        upcoming, tick = 0, self.plan.tick_s
        if self.options.stamp not in STAMPS:
            raise ValueError(f"ray.stamp: expected one of {STAMPS}, got {self.options.stamp!r}")
        self.nodes, self.skew = zip(*(self._skew(actor) for actor in self.actors))
        for index, actor in enumerate(self.actors):
            self.polls[actor.poll.remote(POLL_S, self.options.report_batch_s)] = index
        self.origin = self.last_progress = time.monotonic()
        while self.unfinished > 0:
            now = self.now()
            if now >= self.plan.horizon_s:
                break
            while upcoming < len(arrivals) and arrivals[upcoming].arrival <= now:
                self._arrive(arrivals[upcoming])
                upcoming += 1
            if tick and now >= tick:
                tick = now + self.plan.tick_s
                self.decide("tick")
            wake = min(arrivals[upcoming].arrival if upcoming < len(arrivals) else np.inf, tick or np.inf,
                       self.plan.horizon_s)
            timeout = min(max(0.0, (wake - self.now()) / self.options.speedup), 0.25)
            ready, _ = ray.wait([*self.polls, *self.pending], num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait([*self.polls, *self.pending], num_returns=len(self.polls) + len(self.pending),
                                    timeout=0)
            for ref in ready:
                self._ready(ref)
            self._watch()
        self.record.close_live(self.now(), self.requests.values(), self.times)
        return self.record

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
        if wall - self.last_progress > self.options.stall_timeout_s:
            for request in self.requests.values():
                if not request.final and request.arrival <= self.now():
                    self._end(request, "aborted", "stalled", request.instance)
            self.last_progress = wall

    # ---- reports from workers -------------------------------------------------------
    def _reports(self, index: int, reports: list[Report]) -> None:
        now, events = self.now(), set()
        wall, skew, speedup = time.monotonic(), self.skew[index], self.options.speedup
        for report in reports:
            self.lag.append(wall - (report.sent_s - skew))
            if report.step is not None:
                ended = report.ended_s - skew
                stamp = now if self.options.stamp == "receipt" else min(now, (ended - self.origin) * speedup)
                events |= self._step(index, report.step, stamp)
            for kind, request_id, value in report.notes:
                self.moves.note(index, kind, self.requests[request_id], value)
        if reports:
            self._sync(index, reports[-1].stats)
        if "prefill_done" in events:
            self.decide("prefill_done")
        elif "finished" in events:
            self.decide("finished")

    def _step(self, index: int, step, now: float) -> set[str]:
        events = set()
        if step.shape is not None and step.start_s is not None:
            self.record.step(index, now, step.end_s - step.start_s, step.shape)
        for request_id, token in zip(step.tokens, step.token_ids):
            self.requests[request_id].output.append(token)
        for request_id in step.tokens:
            request = self.requests[request_id]
            self.times[request_id].append(now)
            request.tracker.add_tokens(now)
            if request.state in (WAITING, PREFILLING):
                self.place(request, DECODING, index)
        for request_id in step.preempted:
            request = self.requests[request_id]
            self.place(request, WAITING, index)
            self.record.event(now, "preempt", request_id, index, detail="engine-recompute")
        for request_id in step.prefilled:
            request = self.requests[request_id]
            self.place(request, HANDOFF, index)
            self.to_hand_off[request_id] = request
            self.record.event(now, "prefill_end", request_id, index)
            events.add("prefill_done")
        for request_id in step.finished:
            self._end(self.requests[request_id], FINISHED, "", index)
            events.add("finished")
        return events

    def _sync(self, index: int, stats: dict) -> None:
        """The worker's load as it reported it, plus what was sent after (a report in
        flight must not erase requests the router just sent there)."""
        table, unseen = self.plan.table, self.unseen[index]
        for column in ("free_blocks", "queued", "queued_tokens", "running", "context_tokens", "step_time_s"):
            getattr(table, column)[index] = stats[column]
        while len(unseen) > self.submits[index] - stats["submitted"]:
            unseen.popleft()
        table.queued[index] += len(unseen)
        table.queued_tokens[index] += sum(unseen)

    def place(self, request: Request, state: str, instance: int) -> None:
        if request.state == DECODING and request.instance >= 0:
            self.running[request.instance].discard(request.id)
        request.state, request.instance = state, instance
        if state == DECODING:
            self.running[instance].add(request.id)

    def _end(self, request: Request, state: str, reason: str, instance: int) -> None:
        if request.final:
            return
        self.place(request, state, instance)
        request.reason = reason
        self.to_dispatch.pop(request.id, None)
        self.to_hand_off.pop(request.id, None)
        kind = {FINISHED: "finish", REJECTED: "reject"}.get(state, "abort")
        self.record.event(self.now(), kind, request.id, instance, detail=reason)
        self.unfinished -= 1
        self.last_progress = time.monotonic()
        if self.progress:
            self.progress(len(self.requests) - self.unfinished, len(self.requests))

    # ---- faults --------------------------------------------------------------------
    def fault(self, index: int, reason: str) -> None:
        """A worker is gone: re-queue for recompute every request it held."""
        if not self.plan.table.alive[index]:
            return
        self.plan.table.set_alive(index, False)
        now = self.now()
        self.record.event(now, "fault", -1, index, detail=reason)
        for ref in [r for r, i in self.polls.items() if i == index]:
            del self.polls[ref]
        self.moves.fault(index)
        for request in self.requests.values():
            if request.instance == index and not request.final and request.id not in self.transfers:
                self.requeue(request, f"instance {index} failed")
        self.decide("fault")

    def requeue(self, request: Request, reason: str) -> None:
        self.place(request, WAITING, -1)
        self.to_hand_off.pop(request.id, None)
        self.moves.forget(request.id)
        self.to_dispatch[request.id] = request
        self.record.event(self.now(), "fault", request.id, -1, detail=f"requeued: {reason}")

    # ---- the router ----------------------------------------------------------------
    def _arrive(self, request: Request) -> None:
        request.tracker = RequestTracker(request.arrival, self.plan.slos[request.tenant])
        self.times[request.id] = array("d")
        self.record.event(self.now(), "arrive", request.id)
        self.to_dispatch[request.id] = request
        self.decide("arrival")

    def view(self, request: Request) -> RequestView:
        tracker, now = request.tracker, self.now()
        generated = len(self.times[request.id])
        return RequestView(request.id, request.tenant, request.arrival, request.prompt, request.target,
                           generated, request.instance, tracker.idle_latency(now, False), tracker.slack(now),
                           request.arrival + tracker.last, request.prompt + generated,
                           tracker.missed_ttft_tbt(now), tracker.slo)

    def decide(self, event: str) -> None:
        policy, table = self.plan.policy, self.plan.table.view
        self._strand(PREFILL, self.to_dispatch)
        self._strand(DECODE, self.to_hand_off)
        preempted = self.moves.preempted
        if not (self.to_dispatch or self.to_hand_off or preempted or event in policy.events):
            return
        running = {}
        if policy.needs_running:
            running = {i: tuple(self.view(self.requests[r]) for r in ids if not self.moves.moving(r))
                       for i, ids in enumerate(self.running) if ids}
        snapshot = Snapshot(self.now(), event, table, tuple(self.view(r) for r in self.to_dispatch.values()),
                            tuple(self.view(r) for r in self.to_hand_off.values()),
                            tuple(self.view(r) for r in preempted.values()), running)
        for action in policy.decide(snapshot):
            self._apply(action)

    def _strand(self, role: int, waiting: dict[int, Request]) -> None:
        if waiting and not self.plan.table.view.serving(role):
            for request in list(waiting.values()):
                self._end(request, REJECTED, "no live instance", -1)

    def _apply(self, action) -> None:
        if isinstance(action, Dispatch):
            request = self._pending(self.to_dispatch, action, "dispatch")
            self.dispatch(request, self.instance(action.instance, action))
        elif isinstance(action, Handoff):
            self.moves.hand_off(self._pending(self.to_hand_off, action, "hand off"), action)
        elif isinstance(action, Reject):
            request = (self.to_dispatch.pop(action.request, None) or self.moves.abandon(action.request)
                       or self._pending(self.to_hand_off, action, "reject"))
            if request.state == HANDOFF:
                self.actors[request.instance].abort.remote(request.id)
            self._end(request, REJECTED, action.reason, request.instance)
        elif isinstance(action, (Migrate, Preempt)):
            self.decisions += 1
            if isinstance(action, Migrate):
                self.moves.migrate(action, self.decisions - 1)
            else:
                self.moves.preempt(action, self.decisions - 1)
        elif isinstance(action, Resume):
            self.moves.resume(action)
        else:
            raise ValueError(f"policy {self.plan.policy.name!r}: {action!r} is not an action")

    def dispatch(self, request: Request, index: int, record: bool = True) -> None:
        spec = Request(request.id, request.tenant, request.arrival, request.prompt, request.target,
                       generated=len(self.times[request.id]), output=list(request.output))
        self.actors[index].submit.remote(spec)
        self.submits[index] += 1
        self.unseen[index].append(spec.to_prefill)
        self.place(request, WAITING, index)
        table = self.plan.table
        table.queued[index] += 1
        table.queued_tokens[index] += spec.to_prefill
        if record:
            self.record.event(self.now(), "dispatch", request.id, index)

    def _pending(self, pending: dict[int, Request], action, verb: str) -> Request:
        return take_waiting(pending, action, verb, self.plan.policy.name)

    def instance(self, index: int, action) -> int:
        return live_instance(self.plan.table.alive, index, action, self.plan.policy.name)
