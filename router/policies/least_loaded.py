"""Least-loaded (Llumnix-like): new requests to the prefill instance with the least
queued work, prefilled ones to the decode instance with the most free KV, and at each
tick a migration from the fullest decode instance to the emptiest when they differ
by more than `imbalance` (the request with the shortest context, cheapest to move)."""
from __future__ import annotations

import numpy as np

from router.actions import Action, Migrate
from router.policies.common import Headroom, by, dispatch, hand_off, migration_mode
from router.policy import Policy
from router.snapshot import Snapshot


class LeastLoaded(Policy):
    name = "least_loaded"
    events = frozenset({"tick"})
    needs_running = True
    rules = {"rebalance": "migrate the shortest context off the fullest decode instance to the emptiest"}

    def __init__(self, seed: int = 0, imbalance: float = 0.2, migrations_per_tick: int = 1, mode: str = "live") -> None:
        super().__init__(seed)
        self.imbalance, self.migrations_per_tick = imbalance, migrations_per_tick
        self.mode = migration_mode(self.name, mode)

    def decide(self, snapshot: Snapshot) -> list[Action]:
        headroom = Headroom(snapshot.instances)
        actions: list[Action] = []
        actions += dispatch(snapshot, headroom)
        actions += hand_off(snapshot, headroom, np.arange(len(snapshot.to_hand_off)), self._most_room)
        if snapshot.event == "tick":
            actions += self._rebalance(snapshot, headroom)
        return actions

    @staticmethod
    def _most_room(snapshot: Snapshot, headroom: Headroom, request) -> int | None:
        fits = headroom.fitting(request)
        return int(headroom.decode[fits[np.argmax(headroom.rooms[fits])]]) if len(fits) else None

    def _rebalance(self, snapshot: Snapshot, headroom: Headroom) -> list[Action]:
        instances, decode = snapshot.instances, headroom.decode
        if len(decode) < 2:
            return []
        usage = 1.0 - instances.free_blocks[decode] / instances.total_blocks[decode]
        source, target = int(decode[np.argmax(usage)]), int(decode[np.argmin(usage)])
        if usage.max() - usage.min() <= self.imbalance:
            return []
        table = snapshot.running.get(source)
        if table is None:
            return []
        movable = by(table.context_tokens, table.id)[:self.migrations_per_tick]
        return [Migrate(int(table.id[k]), target, self.mode, "rebalance") for k in movable]
