"""Least-loaded (Llumnix-like): new requests to the prefill instance with the least
queued work, prefilled ones to the decode instance with the most free KV, and at each
tick a migration from the fullest decode instance to the emptiest when they differ
by more than `imbalance` (the request with the shortest context, cheapest to move)."""
from __future__ import annotations

from router.actions import Action, Dispatch, Handoff, Migrate
from router.policies.common import blocks_needed, by_instance, fastest_prefill, room, stays_local
from router.policy import Policy
from router.snapshot import DECODE, Snapshot


class LeastLoaded(Policy):
    name = "least_loaded"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, imbalance: float = 0.2, migrations_per_tick: int = 1, mode: str = "live") -> None:
        super().__init__(seed)
        self.imbalance, self.migrations_per_tick, self.mode = imbalance, migrations_per_tick, mode

    def decide(self, snapshot: Snapshot) -> list[Action]:
        instances, queued, taken = snapshot.instances, {}, {}
        actions: list[Action] = []
        for request in snapshot.to_dispatch:
            target = fastest_prefill(snapshot, request, queued)
            if target is not None:
                actions.append(Dispatch(request.id, target))
        for request in snapshot.to_hand_off:
            if stays_local(snapshot, request):
                actions.append(Handoff(request.id, request.instance))
                continue
            need = blocks_needed(request, instances)
            fits = [i for i in instances.serving(DECODE) if room(instances, i, taken) >= need]
            if fits:
                target = max(fits, key=lambda i: (room(instances, i, taken), -i))
                taken[target] = taken.get(target, 0) + need
                actions.append(Handoff(request.id, target))
        if snapshot.event == "tick":
            actions += self._rebalance(snapshot)
        return actions

    def _rebalance(self, snapshot: Snapshot) -> list[Action]:
        instances = snapshot.instances
        decode = instances.serving(DECODE)
        if len(decode) < 2:
            return []
        usage = {i: 1.0 - instances.free_blocks[i] / instances.total_blocks[i] for i in decode}
        source, target = max(decode, key=lambda i: (usage[i], -i)), min(decode, key=lambda i: (usage[i], i))
        if usage[source] - usage[target] <= self.imbalance:
            return []
        movable = sorted(by_instance(snapshot.running).get(source, []), key=lambda r: (r.context_tokens, r.id))
        return [Migrate(r.id, target, self.mode) for r in movable[:self.migrations_per_tick]]
