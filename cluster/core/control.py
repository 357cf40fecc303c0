"""The control plane, one for the simulator and the live cluster: the requests that
await a decision (to dispatch, to hand off, preempted by the router), the router
called at the runtime's events (`router.events`), each action checked and applied,
the router's moves numbered and vetoed, the victim of an engine out of KV, and the
event log. The runtime (`cluster.core.runtime`) does what differs: its clock,
putting requests on instances, moving KV, stopping a request at a step boundary."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.core.moves import Moves
from cluster.core.recorder import Recorder
from cluster.core.request import ABORTED, FINISHED, HANDOFF, REJECTED, TRANSFER, WAITING, Request
from cluster.core.runtime import Runtime
from cluster.core.scheduling import blocks_for
from cluster.core.setup import RunSetup
from cluster.core.views import Running, Views
from router import events
from router.actions import Dispatch, Handoff, Migrate, Preempt, Reject, Resume, live_instance, take_waiting
from router.policy import Policy
from router.snapshot import DECODE, PREFILL, Snapshot

END_KINDS = {FINISHED: "finish", REJECTED: "reject", ABORTED: "abort"}
ACTION_KINDS = {Migrate: "migrate", Preempt: "preempt", Reject: "reject"}
HANDOFF_TRIES = 3


@dataclass(frozen=True)
class Transfer:
    """A hand-off in flight: the prefilled KV going from `source` to `target`."""
    source: int
    target: int
    blocks: int
    nbytes: float
    copy: int


class ControlPlane:
    def __init__(self, setup: RunSetup, runtime: Runtime) -> None:
        self.setup, self.rt, self.policy, self.table = setup, runtime, setup.policy, setup.table
        self.requests = {r.id: r for r in setup.requests}
        self.views = Views(setup.requests, setup.slos, runtime)
        self.record = Recorder()
        self.to_dispatch: dict[int, Request] = {}
        self.to_hand_off: dict[int, Request] = {}
        self.transfers: dict[int, Transfer] = {}
        self.copies: dict[int, int] = {}
        self.copy_count = 0
        self.failed_handoffs: dict[int, int] = {}
        self.moves = Moves(setup, runtime, self.record, self.requests, self.requeue, self.copy_kv)
        self.decisions = 0
        self.unfinished = len(self.requests)
        self.victim_rule = type(self.policy).choose_victim is not Policy.choose_victim
        self.victims: dict[int, int | None] = {}
        self.admitted: set[int] = set()
        self.decided_at: list[float] = []
        self.decision_rules: list[str] = []

    # ---- what the runtime reports ------------------------------------------------------
    def add(self, request: Request) -> None:
        """A request the run did not know of at its start (a server's): it arrives now."""
        if request.id in self.requests:
            raise ValueError(f"request {request.id}: already in the run")
        if request.tenant not in self.views.tenant_index:
            raise ValueError(f"request {request.id}: tenant {request.tenant!r} has no SLO; "
                             f"expected one of {list(self.views.tenants)}")
        self.requests[request.id] = request
        self.views.add(request)
        self.unfinished += 1
        self.arrive(request)

    def arrive(self, request: Request) -> None:
        self.record.event(self.rt.now(), "arrive", request.id)
        self.to_dispatch[request.id] = request
        too_big = self._too_big(request)
        if too_big:
            self._reject(request, too_big)
            return
        self.decide(events.ARRIVAL)

    def _too_big(self, request: Request) -> str:
        """Why no instance could ever serve `request` (its KV larger than any instance's
        that would prefill it or decode it to the end), or ''."""
        view = self.table.view
        room = view.total_blocks - view.watermark_blocks
        for role, tokens, what in ((PREFILL, request.prompt, "prompt"),
                                   (DECODE, request.prompt + request.max_tokens, "prompt with its output")):
            serving = view.serving(role)
            need, most = blocks_for(tokens, view.block_size), max((room[i] for i in serving), default=None)
            if most is not None and need > most:
                verb = "prefill" if role == PREFILL else "decode"
                return f"too large: its {what} needs {need} KV blocks; the largest instance that can {verb} has {most}"
        return ""

    def prefilled(self, request: Request, instance: int) -> None:
        self.record.event(self.rt.now(), "prefill_end", request.id, instance)
        self.to_hand_off[request.id] = request

    def engine_preempted(self, request: Request, instance: int, mode: str) -> None:
        self.record.event(self.rt.now(), "preempt", request.id, instance, detail=f"engine-{mode}")

    def finished(self, request: Request, instance: int) -> None:
        self._close(request, FINISHED, "", instance)

    def end(self, request: Request, state: str, reason: str, instance: int | None = None, decision: int = -1) -> None:
        """The router or the runtime ends a request (rejected, aborted): its hand-off or
        move in flight, if any, ends with it."""
        if request.final:
            return
        transfer = self.transfers.pop(request.id, None)
        if transfer is not None:
            self.rt.cancel(request, transfer.target, transfer.blocks)
        self.moves.forget(request.id)
        self._close(request, state, reason, request.instance if instance is None else instance, decision)

    def abort(self, request: Request, reason: str) -> None:
        """The request's client gave it up: every instance that holds any of it drops it
        (its KV, its place in a queue, its parked copy), and it ends aborted."""
        if request.final:
            return
        holders = {request.instance, self.moves.parked_at.get(request.id, -1)} - {-1}
        for instance in holders:
            if self.table.alive[instance]:
                self.rt.drop(request, instance)
        self.end(request, ABORTED, reason)
        self.rt.changed(*holders)
        self.decide(events.FINISHED)

    def _close(self, request: Request, state: str, reason: str, instance: int, decision: int = -1) -> None:
        self.rt.place(request, state, instance)
        request.reason = reason
        self.to_dispatch.pop(request.id, None)
        self.to_hand_off.pop(request.id, None)
        self.record.event(self.rt.now(), END_KINDS[state], request.id, instance, detail=reason, decision=decision)
        self.admitted.discard(request.id)
        self.unfinished -= 1
        self.rt.ended(request)

    def copy_kv(self, request: Request, source: int, target: int, first: int, tokens: int, final: bool) -> int:
        """Start a KV copy (`Runtime.copy_kv`); its number, which its answer carries."""
        self.copy_count += 1
        self.copies[self.copy_count] = request.id
        self.rt.copy_kv(request, source, target, first, tokens, final, self.copy_count)
        return self.copy_count

    def copied(self, request_id: int, copy: int, reason: str = "", arrived_s: float | None = None) -> None:
        """Copy number `copy` of the request's KV arrived (`reason` empty) or did not;
        `arrived_s`: when it was in, where the runtime knows it better than now. An answer
        to a copy whose move has ended meanwhile is ignored."""
        if self.copies.pop(copy, None) != request_id:
            return
        request, transfer = self.requests[request_id], self.transfers.get(request_id)
        if transfer is not None and transfer.copy == copy:
            del self.transfers[request_id]
            self._handed_off(request, transfer, reason, arrived_s)
        else:
            self.moves.copied(request, copy, reason)

    def preempt_done(self, request_id: int, nbytes: float) -> None:
        self.moves.preempt_done(self.requests[request_id], nbytes)

    def detach_done(self, request_id: int, context: int) -> None:
        self.moves.detach_done(self.requests[request_id], context)

    def fault(self, instance: int, reason: str) -> None:
        """An instance is gone: every request it held waits to be dispatched again."""
        if not self.table.alive[instance]:
            return
        self.table.set_alive(instance, False)
        self.record.event(self.rt.now(), "fault", -1, instance, detail=reason)
        self.moves.fault(instance)
        for request in self.requests.values():
            if request.instance == instance and not request.final and request.id not in self.transfers:
                self.requeue(request, f"instance {instance} failed")
        self.decide(events.FAULT)

    def requeue(self, request: Request, reason: str) -> None:
        self.rt.place(request, WAITING, -1)
        self.to_hand_off.pop(request.id, None)
        self.moves.forget(request.id)
        self.to_dispatch[request.id] = request
        self.record.event(self.rt.now(), "fault", request.id, -1, detail=f"requeued: {reason}")

    # ---- the router ---------------------------------------------------------------------
    def decide(self, event: str) -> None:
        if not (self.to_dispatch or self.to_hand_off or self.moves.preempted or event in self.policy.events):
            return
        self._strand(PREFILL, self.to_dispatch)
        self._strand(DECODE, self.to_hand_off)
        snapshot = self.snapshot(event)
        for action in self.policy.decide(snapshot):
            self.apply(action)
        if self.admitted:
            self._admit_vetoed()
        if self.victim_rule and not self.rt.victim_at_need:
            self._share_victims(snapshot)

    def snapshot(self, event: str) -> Snapshot:
        """What the policy decides on at `event`."""
        table = self.views.table
        return Snapshot(self.rt.now(), event, self.table.view, table(self.to_dispatch.values()),
                        table(self.to_hand_off.values()), table(self.moves.preempted.values()),
                        self._running() if self.policy.needs_running else {}, self.views.slo.slos)

    def _running(self) -> Running:
        """Decoding requests by instance, those being moved left out (built when read)."""
        return Running(list(self.rt.busy()), self.views, self.moves.moving_slots())

    def _strand(self, role: int, waiting: dict[int, Request]) -> None:
        if waiting and not self.table.view.serving(role):
            for request in list(waiting.values()):
                self._reject(request, "no live instance")

    def victim(self, instance: int, running) -> int | None:
        """The request an engine out of KV stops: the policy's choice (None: the engine's own)."""
        views = {instance: self.views.decoding(instance, self.moves.moving_slots())}
        return self.policy.choose_victim(Snapshot(self.rt.now(), events.PREEMPTING, self.table.view, running=views),
                                         instance)

    def _share_victims(self, snapshot: Snapshot) -> None:
        running = self._running()
        snapshot = Snapshot(snapshot.now, events.PREEMPTING, snapshot.instances, running=running)
        for instance in running:
            choice = self.policy.choose_victim(snapshot, instance)
            if self.victims.get(instance) != choice:
                self.victims[instance] = choice
                self.rt.prefer_victim(instance, choice)

    # ---- applying actions -------------------------------------------------------------
    def apply(self, action) -> None:
        if isinstance(action, Dispatch):
            request, instance = self._take(self.to_dispatch, action, "dispatch"), self._instance(action.instance, action)
            self.record.event(self.rt.now(), "dispatch", request.id, instance)
            self.rt.enqueue(request, instance)
            self.rt.changed(instance)
        elif isinstance(action, Handoff):
            self._hand_off(self._take(self.to_hand_off, action, "hand off"), action)
        elif isinstance(action, Reject):
            self._policy_rejects(action)
        elif isinstance(action, (Migrate, Preempt)):
            decision = self._number(action)
            if decision is None:
                return
            if isinstance(action, Migrate):
                self.moves.migrate(action, decision)
            else:
                self.moves.preempt(action, decision)
        elif isinstance(action, Resume):
            self.moves.resume(action)
        else:
            raise ValueError(f"policy {self.policy.name!r}: {action!r} is not an action")

    def _number(self, action) -> int | None:
        """The number of the router's decision `action` (a move, a rejection); None if it is vetoed."""
        self.decisions += 1
        decision = self.decisions - 1
        self.decided_at.append(self.rt.now())
        self.decision_rules.append(action.rule)
        if self.setup.veto.covers(decision, ACTION_KINDS[type(action)], getattr(action, "mode", ""), action.rule):
            self.record.event(self.rt.now(), "vetoed", action.request, detail=type(action).__name__, decision=decision)
            return None
        return decision

    def _policy_rejects(self, action: Reject) -> None:
        rid = action.request
        if rid in self.admitted:
            return
        if not any(rid in waiting for waiting in (self.to_dispatch, self.moves.preempted, self.to_hand_off)):
            self._take({}, action, "reject")
        decision = self._number(action)
        if decision is None:
            self.admitted.add(rid)
            return
        request = self.to_dispatch.pop(rid, None) or self.moves.abandon(rid) or self.to_hand_off.pop(rid)
        self._reject(request, action.reason, decision)

    def _admit_vetoed(self) -> None:
        """Serve the requests whose rejection was vetoed, where the policy did not: the
        quickest prefill, the decode instance with the most free KV, back home."""
        view = self.table.view
        for rid in list(self.admitted):
            if rid in self.to_dispatch and view.serving(PREFILL):
                self.apply(Dispatch(rid, min(view.serving(PREFILL), key=lambda i: view.queued_tokens[i])))
            elif rid in self.to_hand_off and view.serving(DECODE):
                self.apply(Handoff(rid, max(view.serving(DECODE), key=lambda i: view.free_blocks[i])))
            elif rid in self.moves.preempted:
                self.apply(Resume(rid, self.moves.parked_at[rid]))

    def _reject(self, request: Request, reason: str, decision: int = -1) -> None:
        if request.state == HANDOFF:
            self.rt.drop(request, request.instance)
        self.end(request, REJECTED, reason, decision=decision)

    def _take(self, waiting: dict[int, Request], action, verb: str) -> Request:
        return take_waiting(waiting, action, verb, self.policy.name)

    def _instance(self, index: int, action) -> int:
        return live_instance(self.table.alive, index, action, self.policy.name)

    def _hand_off(self, request: Request, action: Handoff) -> None:
        source, target = request.instance, self._instance(action.target, action)
        if target == source:
            self.rt.decode_here(request)
            self.rt.changed(source)
            return
        context = self.rt.context_of(request)
        blocks = blocks_for(context, self.table.view.block_size)
        if not self.rt.reserve(request, target, blocks):
            self.to_hand_off[request.id] = request
            return
        nbytes = context * self.setup.kv_bytes_per_token
        self.rt.place(request, TRANSFER, source)
        self.transfers[request.id] = Transfer(source, target, blocks, nbytes, self.copy_count + 1)
        self.copy_kv(request, source, target, 0, context, True)
        self.record.event(self.rt.now(), "transfer_start", request.id, source, target, nbytes)

    def _handed_off(self, request: Request, transfer: Transfer, reason: str, arrived_s: float | None = None) -> None:
        source, target, now = transfer.source, transfer.target, self.rt.now()
        if not reason:
            self.failed_handoffs.pop(request.id, None)
            self.rt.release(request, source)
            self.rt.admit(request, target, transfer.blocks)
            self.record.event(now if arrived_s is None else arrived_s, "transfer_end", request.id, source, target,
                              transfer.nbytes)
            self.rt.changed(source, target)
            self.decide(events.HANDOFF_DONE)
            return
        self.rt.cancel(request, target, transfer.blocks)
        self.record.event(now, "transfer_abort", request.id, source, target, detail=reason)
        self.rt.changed(target)
        tries = self.failed_handoffs[request.id] = self.failed_handoffs.get(request.id, 0) + (reason != "target_full")
        if not self.table.alive[source] or reason == "source_dead":
            self.requeue(request, reason)
        elif tries >= HANDOFF_TRIES:
            self.failed_handoffs.pop(request.id)
            self.rt.drop(request, source)
            self.requeue(request, f"hand-off failed {tries} times ({reason})")
        else:
            self.rt.place(request, HANDOFF, source)
            self.to_hand_off[request.id] = request
        if reason != "target_full":
            self.decide(events.HANDOFF_FAILED)
