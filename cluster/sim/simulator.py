"""The discrete-event runtime: a virtual clock, an event heap, the vLLM-like instances,
KV transfers over contended links; the control plane (`cluster.core.control`) makes
every routing decision. Anything that takes a running request out of a batch waits
for its instance's next step boundary: the instance's segment is cut after the step
in flight."""
from __future__ import annotations

import heapq
import pickle
from typing import Callable

import numpy as np

from cluster.core.control import ControlPlane
from cluster.core.instance import Instance
from cluster.core.recorder import Recorder
from cluster.core.request import DECODING, PREEMPTED, PREFILL_PIECE, SWAPPED, WAITING, Request
from cluster.core.runtime import Runtime
from cluster.core.scheduling import NOT_DECODING, Outcome
from cluster.core.setup import RunSetup, Veto
from cluster.core.tables import ABORTED
from router import events
from router.snapshot import NO_LIMIT

ARRIVE, WAKE, TRANSFER_DONE, TICK, QUEUED = 0, 1, 2, 3, 4
STALL_S = 120.0
"""Simulated seconds of ticks with nothing else to happen after which a run is stalled
(the live runtime's `stall_timeout_s`)."""


class Simulator(Runtime):
    victim_at_need = True

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        self.instances = [Instance(spec) for spec in setup.instances]
        self.control = ControlPlane(setup, self)
        self.requests = self.control.requests
        self.heap: list[tuple] = []
        self.seq = 0
        self.clock = 0.0
        self.versions = [0] * len(self.instances)
        self.link_version = 0
        self.copies: dict[int, tuple[int, int, str]] = {}
        self.corrupt: set[int] = set()
        self.keys = 0
        self.deferred: dict[int, list[tuple[Request, str]]] = {}
        self.stored = False
        self.watch: set[int] = set()
        self.idle_ticks = 0
        self.on_the_way: dict[int, int] = {}
        if self.control.victim_rule:
            for instance in self.instances:
                instance.choose_victim = self.control.victim

    @property
    def record(self) -> Recorder:
        return self.control.record

    def _push(self, time: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, a, b))

    def run(self) -> Recorder:
        self.start()
        self.advance()
        return self.close()

    def start(self) -> None:
        for request in self.setup.requests:
            self._push(request.arrival, ARRIVE, request.id)
        if self.setup.tick_s:
            self._push(self.setup.tick_s, TICK)

    def advance(self, before: float = float("inf"), done: Callable[[], bool] | None = None) -> bool:
        """Handle events until the run is over (True), or pause (False) before the first
        event at or after `before`, or after the event that makes `done()` true. A paused
        simulator may be copied (`copy.deepcopy`) and each copy advanced on its own."""
        handlers = {ARRIVE: self._arrive, WAKE: self._wake, TRANSFER_DONE: self._transfer_done, TICK: self._tick,
                    QUEUED: self._queued}
        control, heap = self.control, self.heap
        while heap:
            if heap[0][0] >= before:
                return False
            time, _, kind, a, b = heapq.heappop(heap)
            if time > self.setup.horizon_s:
                self.stop_at(self.setup.horizon_s)
                return True
            self.clock = time
            handlers[kind](a, b)
            if self.stored:
                self.stored = False
                control.decide(events.STORED)
            if control.unfinished == 0:
                return True
            if done is not None and done():
                return False
        self._stalled()
        return True

    def close(self, only: list[Request] | None = None) -> Recorder:
        """The run's tables (of the requests in `only`, if given) as of now."""
        self.record.close(self.clock, self.requests.values() if only is None else only, self.instances)
        return self.record

    def freeze(self) -> bytes:
        """This paused simulator's whole state, for `fork`."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    def fork(self, veto: Veto, frozen: bytes | None = None) -> Simulator:
        """A copy of this paused simulator (of its state `frozen`, if given) that vetoes
        `veto` from now on; both go on alike but for it (the step-noise generators and
        the policy's are copied with it)."""
        branch = pickle.loads(frozen if frozen is not None else self.freeze())
        branch.setup.veto = veto
        return branch

    def ended(self, request: Request) -> None:
        self.watch.discard(request.id)

    def _stalled(self) -> None:
        """Nothing is left to happen but requests are left: they can never end (the
        live runtime's stall detector aborts them too)."""
        for request in list(self.requests.values()):
            if not request.final and request.arrival <= self.clock:
                where = f" on instance {request.instance}" if request.instance >= 0 else ""
                reason = f"stalled: nothing left to happen while it was {request.state}{where}"
                self.control.end(request, ABORTED, reason)

    def stop_at(self, horizon: float) -> None:
        """The clock stops: every instance keeps the steps that ended by then."""
        self.clock = horizon
        for instance in self.instances:
            outcome = instance.finish_by(horizon)
            if outcome is not None:
                self._settle(instance, outcome)

    def corrupt_next_copy(self, request_id: int) -> None:
        """A fault to inject: the request's next KV copy arrives corrupted (its check fails)."""
        self.corrupt.add(request_id)

    # ---- events -------------------------------------------------------------------
    def _arrive(self, request_id: int, _: int) -> None:
        self.control.arrive(self.requests[request_id])

    def _queued(self, request_id: int, instance: int) -> None:
        if self.on_the_way.get(request_id) != instance:
            return
        del self.on_the_way[request_id]
        request = self.requests[request_id]
        if request.instance == instance and not request.final:
            self.instances[instance].enqueue(request)
            self._kick(self.instances[instance])

    def _wake(self, index: int, version: int) -> None:
        if version != self.versions[index]:
            return
        instance = self.instances[index]
        outcome = instance.complete()
        self._settle(instance, outcome)
        for request, how in self.deferred.pop(index, []):
            self._stop(request, how)
        self._kick(instance)
        if outcome.prefilled:
            self.control.decide(events.PREFILL_DONE)
        elif outcome.finished:
            self.control.decide(events.FINISHED)

    def _transfer_done(self, key: int, version: int) -> None:
        if version != self.link_version:
            return
        self.setup.links.finish(key, self.clock)
        self._reschedule_links()
        request_id, copy, reason = self.copies.pop(key)
        self.control.copied(request_id, copy, reason)

    def _tick(self, _: int, __: int) -> None:
        """A router tick; after `STALL_S` of ticks that found nothing else to happen and
        decided nothing, no more: the requests left are stalled (as live ones are)."""
        quiet = not self.heap
        if self.control.unfinished > 0 and not (quiet and self.idle_ticks * self.setup.tick_s >= STALL_S):
            self._push(self.clock + self.setup.tick_s, TICK)
        recorded = len(self.record.time)
        self.control.decide(events.TICK)
        self.idle_ticks = self.idle_ticks + 1 if quiet and len(self.record.time) == recorded else 0

    # ---- instances ------------------------------------------------------------------
    def _kick(self, instance: Instance) -> None:
        """Let an instance react to a change: schedule if idle, else cut its decode segment short."""
        if instance.idle:
            outcome = Outcome()
            end = instance.schedule(self.clock, outcome)
            self._settle(instance, outcome)
            self.stored |= outcome.stored > 0
            if end is not None:
                self._wake_at(instance, end)
        else:
            end = instance.interrupt(self.clock)
            if end is not None:
                self._wake_at(instance, end)
        self._sync(instance)

    def _at_boundary(self, request: Request, how: str) -> None:
        """Stop `request` when its instance is between steps: now if idle, else after the step in flight."""
        instance = self.instances[request.instance]
        if instance.idle:
            self._stop(request, how)
            self._kick(instance)
            return
        self.deferred.setdefault(instance.id, []).append((request, how))
        end = instance.interrupt(self.clock)
        if end is not None:
            self._wake_at(instance, end)

    def _stop(self, request: Request, how: str) -> None:
        if request.state != DECODING:
            value = NOT_DECODING
        elif how in ("recompute", "swap"):
            value = self.instances[request.instance].preempt(request, how, self.clock)
        elif how == "detach":
            self.instances[request.instance].detach(request)
            value = request.context
        else:
            value = self.instances[request.instance].context_of(request)
        if how in ("recompute", "swap"):
            self.control.preempt_done(request.id, value)
        else:
            self.control.detach_done(request.id, value)

    def _wake_at(self, instance: Instance, end: float) -> None:
        self.versions[instance.id] += 1
        self._push(end, WAKE, instance.id, self.versions[instance.id])

    def _settle(self, instance: Instance, outcome: Outcome) -> None:
        control = self.control
        for request in outcome.preempted:
            control.engine_preempted(request, instance.id, "swap" if request.state == SWAPPED else "recompute")
        for request in outcome.finished:
            control.finished(request, instance.id)
        for request in outcome.prefilled:
            control.prefilled(request, instance.id)

    def _sync(self, instance: Instance) -> None:
        table, i = self.setup.table, instance.id
        queued, tokens, running = instance.load()
        if self.on_the_way:
            coming = [self.requests[r] for r, at in self.on_the_way.items() if at == i]
            queued, tokens = queued + len(coming), tokens + sum(r.to_prefill for r in coming)
        context = instance.context_now(self.clock)
        table.free_blocks[i], table.queued[i], table.queued_tokens[i] = instance.free_soon, queued, tokens
        table.running[i], table.context_tokens[i] = running, context
        table.host_free_blocks[i] = min(instance.host.free, NO_LIMIT)
        table.step_time_s[i] = instance.perf.decode_time(running, context) if running else 0.0

    def _reschedule_links(self) -> None:
        self.link_version += 1
        upcoming = self.setup.links.next_completion()
        if upcoming is not None:
            self._push(max(upcoming[0], self.clock), TRANSFER_DONE, upcoming[1], self.link_version)

    # ---- what a policy sees -------------------------------------------------------------
    def fresh(self, requests) -> None:
        for request in requests:
            if request.fed[0] < len(request.pieces):
                self._feed(request)
            if request.state == DECODING:
                instance, slot = self.instances[request.instance], request.slot
                start = request.join_step + int(self.control.views.slo.n[slot]) - request.join_generated
                stop = instance.steps_done(self.clock)
                if stop > start:
                    self.control.views.slo.add_steps(np.array([slot]), instance.step_times(start, stop))

    def decoding(self, index: int) -> np.ndarray:
        """The slots of the requests decoding on instance `index`, their SLO state brought up
        to now: the decode steps since each was last fed, those fed to one step at once."""
        instance, slo = self.instances[index], self.control.views.slo
        slots, joined, had = instance.batch.slots()
        for slot in slots[slo.n[slots] < had]:
            self._feed(self.setup.requests[slot])
        start, stop = joined + slo.n[slots] - had, instance.steps_done(self.clock)
        for first in np.unique(start[start < stop]):
            slo.add_steps(slots[start == first], instance.step_times(int(first), stop))
        return slots

    def _feed(self, request: Request) -> None:
        """Feed the SLO state the tokens of the request's finished pieces (a prefill's
        token, earlier decode runs) beyond those it has; `fed` caches how many pieces, and
        how many tokens in them, are fed whole."""
        slo, slot = self.control.views.slo, request.slot
        piece, before = request.fed
        for index, first, count in request.pieces[piece:]:
            fed = int(slo.n[slot]) - before
            if fed < count:
                if index == PREFILL_PIECE:
                    slo.add_token(slot, first)
                else:
                    steps = np.frombuffer(self.instances[index].step_end, dtype=np.float64)
                    slo.add_steps(np.array([slot]), steps[first + fed:first + count])
            piece, before = piece + 1, before + count
        request.fed = (piece, before)

    # ---- the control plane's hooks --------------------------------------------------------
    def now(self) -> float:
        return self.clock

    def busy(self) -> list[int]:
        return [instance.id for instance in self.instances if instance.running]

    def context_of(self, request: Request) -> int:
        if request.state == DECODING:
            return self.instances[request.instance].context_of(request, self.clock)
        return request.context

    def enqueue(self, request: Request, instance: int) -> None:
        """Into the instance's queue, after the dispatch noise's delay where there is one."""
        delay = self.setup.dispatch_s()
        if delay > 0:
            request.state, request.instance = WAITING, instance
            self.on_the_way[request.id] = instance
            self._push(self.clock + delay, QUEUED, request.id, instance)
        else:
            self.instances[instance].enqueue(request)

    def decode_here(self, request: Request) -> None:
        self.instances[request.instance].admit_decode(request, request.blocks)

    def reserve(self, request: Request, instance: int, blocks: int) -> bool:
        if not self.instances[instance].reserve(blocks):
            return False
        self._sync(self.instances[instance])
        return True

    def cancel(self, request: Request, instance: int, blocks: int) -> None:
        self.instances[instance].unreserve(blocks)

    def copy_kv(self, request: Request, source: int, target: int, first: int, tokens: int, final: bool,
                move: int) -> None:
        self.keys += 1
        corrupted = request.id in self.corrupt
        self.corrupt.discard(request.id)
        self.copies[self.keys] = (request.id, move, "checksum" if corrupted else "")
        setup = self.setup
        setup.links.start(self.keys, tokens * setup.kv_bytes_per_token, setup.path(source, target), self.clock,
                          setup.stage_overhead_s())
        self._reschedule_links()

    def admit(self, request: Request, instance: int, blocks: int) -> None:
        self.instances[instance].admit_decode(request, blocks)

    def release(self, request: Request, instance: int) -> None:
        self.instances[instance].release(request)

    def preempt(self, request: Request, mode: str) -> None:
        self._at_boundary(request, mode)

    def detach(self, request: Request, keep_kv: bool) -> None:
        self._at_boundary(request, "detach" if keep_kv else "detach_drop")

    def reattach(self, request: Request, instance: int) -> None:
        self.instances[instance].admit_decode(request, request.blocks)

    def resume(self, request: Request, instance: int) -> None:
        if request.blocks:
            self.instances[instance].resume_swapped(request)
        else:
            self.instances[instance].enqueue(request)

    def drop(self, request: Request, instance: int) -> None:
        if self.on_the_way.pop(request.id, None) is not None:
            return
        if request.state == PREEMPTED:
            self.instances[instance].unpark(request)
        else:
            self.instances[instance].remove(request)

    def changed(self, *instances: int) -> None:
        for index in instances:
            self._kick(self.instances[index])
