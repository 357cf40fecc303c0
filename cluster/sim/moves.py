"""Router-driven moves in the simulator: preemption and resume, and D->D migration by
recompute or live (the stage protocol of `migration.live`, over the contended links).

Anything that takes a running request out of a batch waits for its instance's next
step boundary: the instance's segment is cut after the step in flight.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.core.scheduling import blocks_for
from cluster.core.request import DECODING, MIGRATING, PREEMPTED, Request
from migration.live import LiveMigration
from router.actions import Migrate, Preempt, Resume

if TYPE_CHECKING:
    from cluster.sim.simulator import Simulator


class Moves:
    def __init__(self, sim: "Simulator") -> None:
        self.sim = sim
        self.preempted: dict[int, Request] = {}
        self.swapped_at: dict[int, int] = {}
        self.live: dict[int, LiveMigration] = {}

    # ---- preemption -----------------------------------------------------------
    def preempt(self, action: Preempt, decision: int = -1) -> int:
        request = self._running(action.request, action)
        if action.mode not in ("recompute", "swap"):
            raise ValueError(f"Preempt mode: expected 'recompute' or 'swap', got {action.mode!r}")
        self.sim.at_boundary(self.sim.instances[request.instance],
                             lambda: self._preempt_now(request, action.mode, decision))
        return 0

    def _preempt_now(self, request: Request, mode: str, decision: int) -> None:
        if request.state != DECODING:
            return
        instance = self.sim.instances[request.instance]
        nbytes = instance.preempt(request, mode, self.sim.now)
        request.state = PREEMPTED
        self.preempted[request.id] = request
        if mode == "swap":
            self.swapped_at[request.id] = instance.id
        self.sim.record.event(self.sim.now, "preempt", request.id, instance.id, -1, nbytes, detail=mode,
                              decision=decision)

    def abandon(self, request_id: int) -> Request | None:
        """Give up a request the router preempted (its KV, if swapped, is dropped)."""
        self.swapped_at.pop(request_id, None)
        return self.preempted.pop(request_id, None)

    def resume(self, action: Resume) -> int:
        request = self.preempted.pop(action.request, None)
        if request is None:
            raise ValueError(f"Resume: request {action.request} was not preempted by the router")
        instance = self.sim.instance(action.instance, action)
        home = self.swapped_at.pop(request.id, None)
        if home is not None and home != instance.id:
            self.preempted[request.id], self.swapped_at[request.id] = request, home
            raise ValueError(f"Resume: request {request.id} was swapped out on instance {home}; it resumes there")
        if home is not None:
            instance.resume_swapped(request)
        else:
            instance.enqueue(request)
        self.sim.record.event(self.sim.now, "resume", request.id, instance.id)
        return self.sim.kick(instance)

    # ---- migration ------------------------------------------------------------
    def migrate(self, action: Migrate, decision: int = -1) -> int:
        request = self._running(action.request, action)
        target = self.sim.instance(action.target, action)
        source = self.sim.instances[request.instance]
        if target is source or request.id in self.live:
            raise ValueError(f"Migrate: request {request.id} is on instance {source.id} already"
                             if target is source else f"Migrate: request {request.id} is migrating already")
        if action.mode == "recompute":
            self.sim.record.event(self.sim.now, "migrate_start", request.id, source.id, target.id, detail="recompute",
                                  decision=decision)
            self.sim.at_boundary(source, lambda: self._recompute_now(request, target))
            return 0
        if action.mode != "live":
            raise ValueError(f"Migrate mode: expected 'live' or 'recompute', got {action.mode!r}")
        context = source.context_of(request, self.sim.now)
        reserved = blocks_for(context + self.sim.plan.cost.final_stage_tokens + 1, source.config.block_size)
        if not target.reserve(reserved):
            self.sim.record.event(self.sim.now, "migrate_abort", request.id, source.id, target.id, detail="target_full")
            return 0
        migration = LiveMigration(request.id, source.id, target.id, self.sim.now, self.sim.plan.cost, reserved)
        self.live[request.id] = migration
        self.sim.record.event(self.sim.now, "migrate_start", request.id, source.id, target.id, detail="live",
                              decision=decision)
        self._next_stage(request, migration, context)
        return 0

    def _recompute_now(self, request: Request, target) -> None:
        if request.state != DECODING:
            self.sim.record.event(self.sim.now, "migrate_abort", request.id, request.instance, target.id,
                                  detail="finished" if request.final else "preempted")
            return
        self.sim.instances[request.instance].remove(request)
        target.enqueue(request)
        self.sim.record.event(self.sim.now, "migrate_end", request.id, request.instance, target.id)
        self.sim.kick(target)

    def _next_stage(self, request: Request, migration: LiveMigration, context: int) -> None:
        tokens = migration.next_stage(context)
        if migration.final:
            self.sim.at_boundary(self.sim.instances[migration.source], lambda: self._last_stage(request, migration))
        else:
            self._copy(request, migration, tokens)

    def _last_stage(self, request: Request, migration: LiveMigration) -> None:
        source, target = self.sim.instances[migration.source], self.sim.instances[migration.target]
        if request.state != DECODING:
            return self._abort(request, migration, "finished" if request.final else "preempted")
        context = source.context_of(request)
        need = blocks_for(context, source.config.block_size)
        if need > migration.reserved_blocks:
            if not target.reserve(need - migration.reserved_blocks):
                return self._abort(request, migration, "target_full")
            migration.reserved_blocks = need
        source.detach(request)
        request.state = MIGRATING
        migration.stall_start_s = self.sim.now
        migration.copying = context - migration.copied
        self._copy(request, migration, migration.copying)

    def _copy(self, request: Request, migration: LiveMigration, tokens: int) -> None:
        nbytes = tokens * self.sim.plan.kv_bytes_per_token
        self.sim.start_transfer(("migrate", request.id), nbytes, migration.source, migration.target)
        self.sim.record.event(self.sim.now, "migrate_stage", request.id, migration.source, migration.target, nbytes)

    def stage_done(self, request_id: int) -> int:
        request, migration = self.sim.requests[request_id], self.live[request_id]
        migration.stage_done()
        if not migration.final:
            if request.state != DECODING:
                self._abort(request, migration, "finished" if request.final else "preempted")
                return 0
            self._next_stage(request, migration, self.sim.instances[migration.source].context_of(request, self.sim.now))
            return 0
        del self.live[request_id]
        source, target = self.sim.instances[migration.source], self.sim.instances[migration.target]
        source.release(request)
        target.admit_decode(request, migration.reserved_blocks)
        self.sim.record.event(self.sim.now, "migrate_end", request.id, source.id, target.id)
        return self.sim.kick(source) + self.sim.kick(target)

    def _abort(self, request: Request, migration: LiveMigration, reason: str) -> None:
        del self.live[request.id]
        target = self.sim.instances[migration.target]
        target.free += migration.reserved_blocks
        self.sim.record.event(self.sim.now, "migrate_abort", request.id, migration.source, migration.target,
                              detail=reason)
        self.sim.kick(target)

    def _running(self, request_id: int, action) -> Request:
        request = self.sim.requests.get(request_id)
        if request is None or request.state != DECODING:
            raise ValueError(f"{type(action).__name__}: request {request_id} is not decoding "
                             f"(state {getattr(request, 'state', 'unknown')})")
        return request

