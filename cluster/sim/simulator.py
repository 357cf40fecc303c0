"""The discrete-event runtime: a virtual clock, an event heap, instances, KV transfers
over contended links, and the router called at the logical events."""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from typing import Callable

from cluster.core.instance import Instance
from cluster.core.scheduling import Outcome, blocks_for
from cluster.sim.moves import Moves
from cluster.core.recorder import Recorder
from cluster.core.request import DECODING, FINAL, HANDOFF, PREFILL_PIECE, REJECTED, TRANSFER, Request
from migration.cost import TransferCost
from migration.links import LinkPool
from router.actions import Dispatch, Handoff, Migrate, Preempt, Reject, Resume, live_instance, take_waiting
from router.policy import Policy
from router.slo import SLO
from router.snapshot import InstanceTable, RequestView, Snapshot
from router.tracker import RequestTracker

ARRIVE, WAKE, TRANSFER_DONE, TICK = 0, 1, 2, 3


@dataclass
class Plan:
    """Everything a simulation needs, built from an experiment config."""
    instances: list[Instance]
    table: InstanceTable
    policy: Policy
    requests: list[Request]
    slos: dict[str, SLO]
    links: LinkPool
    path: Callable[[int, int], tuple[str, ...]]
    cost: TransferCost
    kv_bytes_per_token: float
    horizon_s: float = float("inf")
    tick_s: float | None = None
    veto: frozenset[int] = frozenset()


class Simulator:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.instances = plan.instances
        self.requests = {r.id: r for r in plan.requests}
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.versions = [0] * len(self.instances)
        self.link_version = 0
        self.to_dispatch: dict[int, Request] = {}
        self.to_hand_off: dict[int, Request] = {}
        self.transfers: dict[int, tuple[Request, int, int, int]] = {}
        self.deferred: dict[int, list[Callable[[], None]]] = {}
        self.record = Recorder()
        self.moves = Moves(self)
        self.decisions = 0
        self.unfinished = len(self.requests)
        if type(plan.policy).choose_victim is not Policy.choose_victim:
            for instance in self.instances:
                instance.choose_victim = self._victim

    def _push(self, time: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, a, b))

    def run(self) -> Recorder:
        for request in self.plan.requests:
            self._push(request.arrival, ARRIVE, request.id)
        if self.plan.tick_s:
            self._push(self.plan.tick_s, TICK)
        handlers = {ARRIVE: self._arrive, WAKE: self._wake, TRANSFER_DONE: self._transfer_done, TICK: self._tick}
        self.unfinished = len(self.requests)
        while self.heap:
            time, _, kind, a, b = heapq.heappop(self.heap)
            if time > self.plan.horizon_s:
                self._stop_at(self.plan.horizon_s)
                break
            self.now = time
            self.unfinished -= handlers[kind](a, b)
            if self.unfinished == 0:
                break
        self.record.close(self.now, self.requests.values(), self.instances)
        return self.record

    def _stop_at(self, horizon: float) -> None:
        """The clock stops: every instance keeps the steps that ended by then."""
        self.now = horizon
        for instance in self.instances:
            outcome = instance.finish_by(horizon)
            if outcome is not None:
                self.unfinished -= self._settle(instance, outcome)

    # ---- events -------------------------------------------------------------
    def _arrive(self, request_id: int, _: int) -> int:
        request = self.requests[request_id]
        self.record.event(self.now, "arrive", request.id)
        self.to_dispatch[request.id] = request
        return self._decide("arrival")

    def _wake(self, index: int, version: int) -> int:
        if version != self.versions[index]:
            return 0
        instance = self.instances[index]
        outcome = instance.complete()
        done = self._settle(instance, outcome)
        for operation in self.deferred.pop(index, []):
            operation()
        done += self.kick(instance)
        if outcome.prefilled:
            done += self._decide("prefill_done")
        elif outcome.finished:
            done += self._decide("finished")
        return done

    def _transfer_done(self, key, version: int) -> int:
        if version != self.link_version:
            return 0
        self.plan.links.finish(key, self.now)
        self._reschedule_links()
        if isinstance(key, tuple):
            return self.moves.stage_done(key[1])
        request, source, target, blocks = self.transfers.pop(key)
        self.instances[source].release(request)
        self.instances[target].admit_decode(request, blocks)
        self.record.event(self.now, "transfer_end", request.id, source, target, request.context * self.plan.kv_bytes_per_token)
        return self.kick(self.instances[source]) + self.kick(self.instances[target]) + self._decide("handoff_done")

    def _tick(self, _: int, __: int) -> int:
        if self.unfinished > 0:
            self._push(self.now + self.plan.tick_s, TICK)
        return self._decide("tick")

    # ---- instances ------------------------------------------------------------
    def kick(self, instance: Instance) -> int:
        """Let an instance react to a change: plan if idle, else cut its decode segment short."""
        if instance.idle:
            outcome = Outcome()
            end = instance.plan(self.now, outcome)
            done = self._settle(instance, outcome)
            if end is not None:
                self._schedule(instance, end)
            self._sync(instance)
            return done
        end = instance.interrupt(self.now)
        if end is not None:
            self._schedule(instance, end)
        self._sync(instance)
        return 0

    def at_boundary(self, instance: Instance, operation: Callable[[], None]) -> None:
        """Run `operation` when `instance` is between steps: now if idle, else after the step in flight."""
        if instance.idle:
            operation()
            self.kick(instance)
            return
        self.deferred.setdefault(instance.id, []).append(operation)
        end = instance.interrupt(self.now)
        if end is not None:
            self._schedule(instance, end)

    def start_transfer(self, key, nbytes: float, source: int, target: int) -> None:
        self.plan.links.start(key, nbytes, self.plan.path(source, target), self.now, self.plan.cost.stage_overhead_s)
        self._reschedule_links()

    def _schedule(self, instance: Instance, end: float) -> None:
        self.versions[instance.id] += 1
        self._push(end, WAKE, instance.id, self.versions[instance.id])

    def _settle(self, instance: Instance, outcome: Outcome) -> int:
        for request in outcome.preempted:
            self.record.event(self.now, "preempt", request.id, instance.id, detail=f"engine-{instance.config.preemption}")
        for request in outcome.finished:
            self.record.event(self.now, "finish", request.id, instance.id)
        for request in outcome.prefilled:
            self.record.event(self.now, "prefill_end", request.id, instance.id)
            self.to_hand_off[request.id] = request
        return len(outcome.finished)

    def _sync(self, instance: Instance) -> None:
        table, i = self.plan.table, instance.id
        queued, tokens, running = instance.load()
        context = instance.context_now(self.now)
        table.free_blocks[i], table.queued[i], table.queued_tokens[i] = instance.free, queued, tokens
        table.running[i], table.context_tokens[i] = running, context
        table.step_time_s[i] = instance.model.decode_time(running, context) if running else 0.0

    # ---- the router -------------------------------------------------------------
    def _feed(self, request: Request) -> RequestTracker:
        """The request's tracker, fed every token received since the last call."""
        if request.tracker is None:
            request.tracker = RequestTracker(request.arrival, self.plan.slos[request.tenant])
        tracker, (piece, offset) = request.tracker, request.fed
        for index, first, count in request.pieces[piece:]:
            self._feed_piece(tracker, index, first, count, offset)
            offset = 0
        piece = len(request.pieces)
        if request.state == DECODING:
            instance = self.instances[request.instance]
            done = instance.steps_done(self.now) - request.join_step
            if done > offset:
                tracker.add_times(instance.step_times(request.join_step + offset, request.join_step + done))
                offset = done
        request.fed = (piece, offset)
        return tracker

    def _feed_piece(self, tracker: RequestTracker, index: int, first, count: int, offset: int) -> None:
        if count <= offset:
            return
        if index == PREFILL_PIECE:
            tracker.add_tokens(first)
        else:
            steps = np.frombuffer(self.instances[index].step_end, dtype=np.float64)
            tracker.add_times(steps[first + offset:first + count])

    def _view(self, request: Request) -> RequestView:
        tracker = self._feed(request)
        context = request.context
        if request.state == DECODING:
            context = self.instances[request.instance].context_of(request, self.now)
        return RequestView(request.id, request.tenant, request.arrival, request.prompt, request.target,
                           tracker.n, request.instance, tracker.idle_latency(self.now, False),
                           tracker.slack(self.now), request.arrival + tracker.last, context,
                           tracker.missed_ttft_tbt(self.now), tracker.slo)

    def _victim(self, instance: Instance) -> Request | None:
        running = {instance.id: tuple(self._view(r) for r in instance.running.values())}
        snapshot = Snapshot(self.now, "preempting", self.plan.table.view, running=running)
        chosen = self.plan.policy.choose_victim(snapshot, instance.id)
        return instance.running.get(chosen) if chosen is not None else None

    def _decide(self, event: str) -> int:
        policy = self.plan.policy
        preempted = self.moves.preempted
        if not (self.to_dispatch or self.to_hand_off or preempted or event in policy.events):
            return 0
        running = {}
        if policy.needs_running:
            running = {instance.id: tuple(self._view(r) for r in instance.running.values() if r.id not in self.moves.live)
                       for instance in self.instances if instance.running}
        snapshot = Snapshot(self.now, event, self.plan.table.view,
                            tuple(self._view(r) for r in self.to_dispatch.values()),
                            tuple(self._view(r) for r in self.to_hand_off.values()),
                            tuple(self._view(r) for r in preempted.values()), running)
        done = 0
        for action in policy.decide(snapshot):
            done += self._apply(action)
        return done

    def _apply(self, action) -> int:
        if isinstance(action, Dispatch):
            request = self._pending(self.to_dispatch, action, "dispatch")
            instance = self.instance(action.instance, action)
            instance.enqueue(request)
            self.record.event(self.now, "dispatch", request.id, instance.id)
            return self.kick(instance)
        if isinstance(action, Handoff):
            return self._hand_off(self._pending(self.to_hand_off, action, "hand off"), action)
        if isinstance(action, Reject):
            request = (self.to_dispatch.pop(action.request, None) or self.moves.abandon(action.request)
                       or self._pending(self.to_hand_off, action, "reject"))
            if request.state == HANDOFF:
                self.instances[request.instance].release(request)
            request.state, request.reason = REJECTED, action.reason
            self.record.event(self.now, "reject", request.id, request.instance, detail=action.reason)
            return 1
        if isinstance(action, (Migrate, Preempt)):
            self.decisions += 1
            decision = self.decisions - 1
            if decision in self.plan.veto:
                self.record.event(self.now, "vetoed", action.request, detail=type(action).__name__, decision=decision)
                return 0
            if isinstance(action, Migrate):
                return self.moves.migrate(action, decision)
            return self.moves.preempt(action, decision)
        if isinstance(action, Resume):
            return self.moves.resume(action)
        raise ValueError(f"policy {self.plan.policy.name!r}: {action!r} is not an action")

    def _pending(self, pending: dict[int, Request], action, verb: str) -> Request:
        return take_waiting(pending, action, verb, self.plan.policy.name)

    def instance(self, index: int, action) -> Instance:
        return self.instances[live_instance(self.plan.table.alive, index, action, self.plan.policy.name)]

    def _hand_off(self, request: Request, action: Handoff) -> int:
        source, target = self.instances[request.instance], self.instance(action.target, action)
        if target is source:
            source.admit_decode(request, request.blocks)
            return self.kick(source)
        blocks = blocks_for(request.context, source.config.block_size)
        if not target.reserve(blocks):
            self.to_hand_off[request.id] = request
            return 0
        self._sync(target)
        request.state = TRANSFER
        nbytes = request.context * self.plan.kv_bytes_per_token
        self.transfers[request.id] = (request, source.id, target.id, blocks)
        self.start_transfer(request.id, nbytes, source.id, target.id)
        self.record.event(self.now, "transfer_start", request.id, source.id, target.id, nbytes)
        return 0

    def _reschedule_links(self) -> None:
        self.link_version += 1
        upcoming = self.plan.links.next_completion()
        if upcoming is not None:
            self._push(max(upcoming[0], self.now), TRANSFER_DONE, upcoming[1], self.link_version)


__all__ = ["Plan", "Simulator", "FINAL"]
