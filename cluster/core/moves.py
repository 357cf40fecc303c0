"""The router's moves of decoding requests, for the control plane: preemption (recompute
or swap) and resume, and migration by recompute or live (the stage protocol of
`migration.live`: copy KV in stages while the request decodes, detach it for the
last stage, admit it at the target). A move that cannot complete is aborted, the
request carries on where it was, and the blocks reserved for it are freed."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cluster.core.recorder import Recorder
from cluster.core.request import DECODING, MIGRATING, PREEMPTED, Request
from cluster.core.runtime import Runtime
from cluster.core.scheduling import HOST_FULL, blocks_for
from cluster.core.setup import RunSetup
from migration.live import LiveMigration
from router.actions import Migrate, Preempt, Resume, live_instance


class Moves:
    def __init__(self, setup: RunSetup, runtime: Runtime, record: Recorder, requests: dict[int, Request],
                 requeue: Callable[[Request, str], None], copy_kv: Callable[..., int]) -> None:
        self.setup, self.rt, self.record, self.requests = setup, runtime, record, requests
        self.requeue, self.copy_kv = requeue, copy_kv
        self.block_size = setup.table.view.block_size
        self.preempted: dict[int, Request] = {}
        self.parked_at: dict[int, int] = {}
        self.swapped: set[int] = set()
        self.asked: dict[int, tuple[str, int]] = {}
        self.recomputing: dict[int, int] = {}
        self.live: dict[int, LiveMigration] = {}
        self.detaching: dict[int, int] = {}

    def moving(self, request_id: int) -> bool:
        return request_id in self.live or request_id in self.asked or request_id in self.recomputing

    def moving_slots(self) -> np.ndarray:
        """The slots of the requests being moved."""
        ids = [*self.live, *self.asked, *self.recomputing]
        return np.fromiter((self.requests[r].slot for r in ids), np.int64, len(ids))

    def forget(self, request_id: int) -> None:
        """The request was re-queued: no move of it goes on."""
        migration = self.live.pop(request_id, None)
        if migration is not None:
            self.rt.cancel(self.requests[request_id], migration.target, migration.reserved_blocks)
        for table in (self.preempted, self.parked_at, self.asked, self.recomputing, self.detaching):
            table.pop(request_id, None)
        self.swapped.discard(request_id)

    # ---- preemption and resume ----------------------------------------------------
    def preempt(self, action: Preempt, decision: int) -> None:
        request = self._running(action)
        self.asked[request.id] = (action.mode, decision)
        self.rt.preempt(request, action.mode)

    def preempt_done(self, request: Request, nbytes: float) -> None:
        mode, decision = self.asked.pop(request.id, ("recompute", -1))
        if nbytes == HOST_FULL:
            self.record.event(self.rt.now(), "preempt_abort", request.id, request.instance, detail="host memory full",
                              decision=decision)
        if nbytes < 0 or request.final:
            return
        home = request.instance
        self.rt.place(request, PREEMPTED, home)
        self.preempted[request.id], self.parked_at[request.id] = request, home
        if mode == "swap":
            self.swapped.add(request.id)
        self.record.event(self.rt.now(), "preempt", request.id, home, -1, nbytes, detail=mode, decision=decision)

    def resume(self, action: Resume) -> None:
        request = self.preempted.pop(action.request, None)
        if request is None:
            raise ValueError(f"Resume: request {action.request} was not preempted by the router")
        target, home = self._instance(action.instance, action), self.parked_at[request.id]
        if request.id in self.swapped and home != target:
            self.preempted[request.id] = request
            raise ValueError(f"Resume: request {request.id} was swapped out on instance {home}; it resumes there")
        del self.parked_at[request.id]
        self.swapped.discard(request.id)
        if home == target:
            self.rt.resume(request, home)
        else:
            self.rt.drop(request, home)
            self.rt.enqueue(request, target)
        self.record.event(self.rt.now(), "resume", request.id, target)
        self.rt.changed(target)

    def abandon(self, request_id: int) -> Request | None:
        """Give up a request the router preempted (what its instance keeps of it is dropped)."""
        request = self.preempted.pop(request_id, None)
        if request is not None:
            self.rt.drop(request, self.parked_at.pop(request_id))
            self.swapped.discard(request_id)
        return request

    # ---- migration ------------------------------------------------------------------
    def migrate(self, action: Migrate, decision: int) -> None:
        request = self._running(action)
        source, target = request.instance, self._instance(action.target, action)
        if target == source:
            raise ValueError(f"Migrate: request {request.id} is on instance {source} already")
        self.record.event(self.rt.now(), "migrate_start", request.id, source, target, detail=action.mode,
                          decision=decision)
        if action.mode == "recompute":
            self.recomputing[request.id] = target
            self._detach(request, keep_kv=False)
            return
        cost, context = self.setup.cost, self.rt.context_of(request)
        migration = LiveMigration(request.id, source, target, self.rt.now(), cost)
        if not self.rt.staged_kv:
            migration.stage = cost.max_stages - 1
        self.live[request.id] = migration
        if not self._reserve(request, migration, blocks_for(context + cost.final_stage_tokens + 1, self.block_size)):
            return self._abort(request, migration, "target_full")
        self._next_stage(request, migration, context)

    def _detach(self, request: Request, keep_kv: bool) -> None:
        self.detaching[request.id] = request.instance
        self.rt.detach(request, keep_kv)

    def detach_done(self, request: Request, context: int) -> None:
        instance = self.detaching.pop(request.id, None)
        if request.id in self.recomputing:
            self._recomputed(request, self.recomputing.pop(request.id), context)
        elif request.id in self.live:
            self._last_stage(request, self.live[request.id], context)
        elif context >= 0 and instance == request.instance and self.setup.table.alive[instance]:
            self.rt.reattach(request, instance)
            self.rt.changed(instance)

    def _recomputed(self, request: Request, target: int, context: int) -> None:
        source, now = request.instance, self.rt.now()
        if context < 0 or request.final:
            self.record.event(now, "migrate_abort", request.id, source, target, detail=_not_decoding(request))
            return
        self.rt.drop(request, source)
        if not self.setup.table.alive[target]:
            self.record.event(now, "migrate_abort", request.id, source, target, detail="target_dead")
            self.requeue(request, "target_dead")
            return
        self.rt.enqueue(request, target)
        self.record.event(now, "migrate_end", request.id, source, target)
        self.rt.changed(target)

    def _next_stage(self, request: Request, migration: LiveMigration, context: int) -> None:
        tokens = migration.next_stage(context)
        if migration.final:
            self._detach(request, keep_kv=True)
        else:
            self._copy(request, migration, tokens)

    def _last_stage(self, request: Request, migration: LiveMigration, context: int) -> None:
        if context < 0 or request.final:
            return self._abort(request, migration, _not_decoding(request))
        self.rt.place(request, MIGRATING, migration.source)
        need = blocks_for(context, self.block_size) - migration.reserved_blocks
        if need > 0 and not self._reserve(request, migration, need):
            return self._abort(request, migration, "target_full")
        migration.stall_start_s = self.rt.now()
        migration.copying = context - migration.copied
        self._copy(request, migration, migration.copying)

    def _reserve(self, request: Request, migration: LiveMigration, blocks: int) -> bool:
        if not self.rt.reserve(request, migration.target, blocks):
            return False
        migration.reserved_blocks += blocks
        return True

    def _copy(self, request: Request, migration: LiveMigration, tokens: int) -> None:
        migration.copy = self.copy_kv(request, migration.source, migration.target, migration.copied, tokens,
                                      migration.final)
        self.record.event(self.rt.now(), "migrate_stage", request.id, migration.source, migration.target,
                          tokens * self.setup.kv_bytes_per_token)

    def copied(self, request: Request, copy: int, reason: str) -> None:
        migration = self.live.get(request.id)
        if migration is None or migration.copy != copy:
            return
        if reason:
            return self._abort(request, migration, reason)
        migration.stage_done()
        if not migration.final:
            if request.state != DECODING or request.instance != migration.source:
                return self._abort(request, migration, _not_decoding(request))
            return self._next_stage(request, migration, self.rt.context_of(request))
        del self.live[request.id]
        self.rt.release(request, migration.source)
        self.rt.admit(request, migration.target, migration.reserved_blocks)
        self.record.event(self.rt.now(), "migrate_end", request.id, migration.source, migration.target)
        self.rt.changed(migration.source, migration.target)

    def _abort(self, request: Request, migration: LiveMigration, reason: str) -> None:
        del self.live[request.id]
        changed = [migration.target] if migration.reserved_blocks else []
        self.rt.cancel(request, migration.target, migration.reserved_blocks)
        if request.state == MIGRATING:
            self.rt.reattach(request, migration.source)
            changed.append(migration.source)
        self.record.event(self.rt.now(), "migrate_abort", request.id, migration.source, migration.target,
                          detail=reason)
        self.rt.changed(*changed)

    def fault(self, instance: int) -> None:
        """Migrations to a dead instance are aborted (those from it end with its requests)."""
        for request_id, migration in list(self.live.items()):
            if migration.target == instance and migration.source != instance:
                self._abort(self.requests[request_id], migration, "target_dead")

    # ---- checks -----------------------------------------------------------------------
    def _running(self, action) -> Request:
        request = self.requests.get(action.request)
        if request is None or request.state != DECODING or self.moving(request.id):
            raise ValueError(f"{type(action).__name__}: request {action.request} is not decoding "
                             f"(state {getattr(request, 'state', 'unknown')})")
        return request

    def _instance(self, index: int, action) -> int:
        return live_instance(self.setup.table.alive, index, action, self.setup.policy.name)


def _not_decoding(request: Request) -> str:
    return "finished" if request.final else "preempted"
