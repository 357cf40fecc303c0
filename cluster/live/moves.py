"""Router-driven moves in the live runtime: P->D handoffs, preemption and resume, and D->D migration
by recompute or live (the stage protocol of `migration.live`: the target pulls KV
stages while the source keeps decoding, the source detaches the request for the
last stage, the target admits it). A move that cannot complete is aborted and the
request carries on where it was; the target's reserved blocks are freed."""
from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.live.actor import Pulled
from cluster.core.request import DECODING, HANDOFF, MIGRATING, PREEMPTED, TRANSFER, WAITING, Request
from cluster.core.scheduling import blocks_for
from migration.live import LiveMigration
from router.actions import Handoff, Migrate, Preempt, Resume

if TYPE_CHECKING:
    from cluster.live.driver import LiveRuntime


class LiveMoves:
    def __init__(self, runtime: "LiveRuntime") -> None:
        self.rt = runtime
        self.preempted: dict[int, Request] = {}
        self.parked_at: dict[int, int] = {}
        self.swapped: set[int] = set()
        self.asked: dict[int, tuple[str, int]] = {}
        self.recomputing: dict[int, int] = {}
        self.live: dict[int, LiveMigration] = {}

    def note(self, index: int, kind: str, request: Request, value: float) -> None:
        if kind == "preempted":
            self._preempted(index, request, value)
        elif kind == "detached":
            if request.id in self.recomputing:
                self._recompute(request, self.recomputing.pop(request.id), value)
            elif request.id in self.live:
                self._last_stage(request, self.live[request.id], int(value))

    def forget(self, request_id: int) -> None:
        """The request was re-queued: no move of it goes on."""
        for table in (self.preempted, self.parked_at, self.asked, self.recomputing, self.live):
            table.pop(request_id, None)
        self.swapped.discard(request_id)

    # ---- handoff: the target pulls the prefilled KV ------------------------------------
    def hand_off(self, request: Request, action: Handoff) -> None:
        rt = self.rt
        source, target = request.instance, rt.instance(action.target, action)
        if target == source:
            rt.actors[source].decode_here.remote(request.id)
            rt.place(request, DECODING, source)
            return
        context = request.prompt + len(rt.times[request.id]) - 1
        blocks = blocks_for(context, rt.block_size)
        nbytes = context * rt.plan.kv_bytes_per_token
        rt.place(request, TRANSFER, source)
        rt.transfers[request.id] = target
        rt.plan.table.free_blocks[target] -= blocks
        ref = rt.pull(request.id, source, target, 0, None, blocks, True)
        rt.call(ref, lambda result: self._handed_off(request, source, target, result))
        rt.record.event(rt.now(), "transfer_start", request.id, source, target, nbytes)

    def _handed_off(self, request: Request, source: int, target: int, result) -> None:
        rt = self.rt
        del rt.transfers[request.id]
        if request.final:
            return
        if isinstance(result, Pulled) and result.ok:
            rt.actors[source].release.remote(request.id)
            rt.place(request, DECODING, target)
            rt.record.event(rt.now(), "transfer_end", request.id, source, target,
                            (request.prompt + 1) * rt.plan.kv_bytes_per_token)
            rt.decide("handoff_done")
            return
        reason = result.reason if isinstance(result, Pulled) else f"target_dead: {type(result).__name__}"
        if reason == "target_full":
            rt.place(request, HANDOFF, source)
            rt.to_hand_off[request.id] = request
            return
        rt.record.event(rt.now(), "transfer_abort", request.id, source, target, detail=reason)
        if rt.plan.table.alive[source] and reason != "source_dead":
            rt.place(request, HANDOFF, source)
            rt.to_hand_off[request.id] = request
        else:
            rt.requeue(request, reason)
        rt.decide("handoff_failed")

    # ---- preemption -----------------------------------------------------------------
    def preempt(self, action: Preempt, decision: int) -> None:
        request = self._running(action.request, action)
        if action.mode not in ("recompute", "swap"):
            raise ValueError(f"Preempt mode: expected 'recompute' or 'swap', got {action.mode!r}")
        self.asked[request.id] = (action.mode, decision)
        self.rt.actors[request.instance].preempt.remote(request.id, action.mode)

    def _preempted(self, index: int, request: Request, nbytes: float) -> None:
        mode, decision = self.asked.pop(request.id, ("recompute", -1))
        if nbytes < 0 or request.final:
            return
        self.rt.place(request, PREEMPTED, index)
        self.preempted[request.id], self.parked_at[request.id] = request, index
        if mode == "swap":
            self.swapped.add(request.id)
        self.rt.record.event(self.rt.now(), "preempt", request.id, index, -1, nbytes, detail=mode, decision=decision)

    def resume(self, action: Resume) -> None:
        request = self.preempted.pop(action.request, None)
        if request is None:
            raise ValueError(f"Resume: request {action.request} was not preempted by the router")
        target = self.rt.instance(action.instance, action)
        home = self.parked_at[request.id]
        if request.id in self.swapped and home != target:
            self.preempted[request.id] = request
            raise ValueError(f"Resume: request {request.id} was swapped out on instance {home}; it resumes there")
        del self.parked_at[request.id]
        self.swapped.discard(request.id)
        if home == target:
            self.rt.actors[home].resume.remote(request.id)
            self.rt.place(request, WAITING, home)
        else:
            self.rt.actors[home].abort.remote(request.id)
            self.rt.dispatch(request, target, record=False)
        self.rt.record.event(self.rt.now(), "resume", request.id, target)

    def abandon(self, request_id: int) -> Request | None:
        """Give up a request the router preempted (its parked state is dropped)."""
        request = self.preempted.pop(request_id, None)
        home = self.parked_at.pop(request_id, None)
        self.swapped.discard(request_id)
        if home is not None and self.rt.plan.table.alive[home]:
            self.rt.actors[home].abort.remote(request_id)
        return request

    # ---- migration ----------------------------------------------------------------
    def migrate(self, action: Migrate, decision: int) -> None:
        request = self._running(action.request, action)
        source, target = request.instance, self.rt.instance(action.target, action)
        if target == source:
            raise ValueError(f"Migrate: request {request.id} is on instance {source} already")
        if action.mode not in ("live", "recompute"):
            raise ValueError(f"Migrate mode: expected 'live' or 'recompute', got {action.mode!r}")
        self.rt.record.event(self.rt.now(), "migrate_start", request.id, source, target, detail=action.mode,
                             decision=decision)
        if action.mode == "recompute":
            self.recomputing[request.id] = target
            self.rt.actors[source].detach.remote(request.id, keep_kv=False)
            return
        context = request.prompt + len(self.rt.times[request.id])
        reserved = blocks_for(context + self.rt.plan.cost.final_stage_tokens + 1, self.rt.block_size)
        migration = LiveMigration(request.id, source, target, self.rt.now(), self.rt.plan.cost, 0)
        if not self.rt.options.staged_kv:
            migration.stage = self.rt.plan.cost.max_stages - 1      # one stage: stop, copy, commit
        self.live[request.id] = migration
        self._stage(request, migration, reserved)

    def _recompute(self, request: Request, target: int, context: float) -> None:
        source = request.instance
        if context < 0 or request.final:
            self.rt.record.event(self.rt.now(), "migrate_abort", request.id, source, target,
                                 detail="finished" if request.final else "not decoding")
            return
        self.rt.actors[source].abort.remote(request.id)
        if not self.rt.plan.table.alive[target]:
            self.rt.requeue(request, "target_dead")
            return
        self.rt.dispatch(request, target, record=False)
        self.rt.record.event(self.rt.now(), "migrate_end", request.id, source, target)

    def _stage(self, request: Request, migration: LiveMigration, reserve: int = 0) -> None:
        tokens = migration.next_stage(request.prompt + len(self.rt.times[request.id]))
        if migration.final:
            self.rt.actors[migration.source].detach.remote(request.id)
        else:
            self._pull(request, migration, tokens, reserve, False)

    def _last_stage(self, request: Request, migration: LiveMigration, context: int) -> None:
        if context < 0 or request.final:
            return self._abort(request, migration, "finished")
        need = blocks_for(context, self.rt.block_size)
        extra = max(0, need - migration.reserved_blocks)
        self.rt.place(request, MIGRATING, migration.source)
        migration.stall_start_s = self.rt.now()
        migration.copying = context - migration.copied
        self._pull(request, migration, migration.copying, extra, True)

    def _pull(self, request: Request, migration: LiveMigration, tokens: int, reserve: int, final: bool) -> None:
        source, target = migration.source, migration.target
        migration.reserved_blocks += reserve
        ref = self.rt.pull(request.id, source, target, migration.copied, None if final else tokens, reserve, final)
        self.rt.call(ref, lambda result: self._pulled(request, migration, result))
        self.rt.record.event(self.rt.now(), "migrate_stage", request.id, source, target,
                             tokens * self.rt.plan.kv_bytes_per_token)

    def _pulled(self, request: Request, migration: LiveMigration, result) -> None:
        if self.live.get(request.id) is not migration:
            return
        if not (isinstance(result, Pulled) and result.ok):
            reason = result.reason if isinstance(result, Pulled) else (
                "timeout" if isinstance(result, TimeoutError) else "target_dead")
            return self._abort(request, migration, reason)
        migration.stage_done()
        if not migration.final:
            if request.state != DECODING or request.instance != migration.source:
                return self._abort(request, migration, "finished" if request.final else "preempted")
            return self._stage(request, migration)
        del self.live[request.id]
        self.rt.actors[migration.source].release.remote(request.id)
        self.rt.place(request, DECODING, migration.target)
        self.rt.record.event(self.rt.now(), "migrate_end", request.id, migration.source, migration.target)

    def _abort(self, request: Request, migration: LiveMigration, reason: str) -> None:
        del self.live[request.id]
        alive = self.rt.plan.table.alive
        if alive[migration.target]:
            self.rt.actors[migration.target].cancel.remote(request.id)
        if request.state == MIGRATING and alive[migration.source]:
            self.rt.actors[migration.source].reattach.remote(request.id)
            self.rt.place(request, DECODING, migration.source)
        self.rt.record.event(self.rt.now(), "migrate_abort", request.id, migration.source, migration.target,
                             detail=reason)

    def fault(self, index: int) -> None:
        """Moves that involve a dead worker end: those it was the target of are aborted."""
        for request_id, migration in list(self.live.items()):
            if migration.target == index and migration.source != index:
                self._abort(self.rt.requests[request_id], migration, "target_dead")

    def moving(self, request_id: int) -> bool:
        return request_id in self.live or request_id in self.asked or request_id in self.recomputing

    def _running(self, request_id: int, action) -> Request:
        request = self.rt.requests.get(request_id)
        if request is None or request.state != DECODING or self.moving(request_id):
            raise ValueError(f"{type(action).__name__}: request {request_id} is not decoding "
                             f"(state {getattr(request, 'state', 'unknown')})")
        return request
