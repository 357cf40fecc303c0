"""Andes (Liu et al., arXiv 2404.16283): QoE-driven scheduling of text streams, as a
peer policy adapted to a prefill/decode cluster.

Andes schedules on each user's token buffer: a request whose reader is ahead loses no
QoE if it pauses, one whose reader waits loses QoE every moment it is not served. At
each decision it solves, per decode instance, a knapsack over the instance's KV: its
decoding requests, the requests it parked (swapped out to host memory) and the
hand-offs waiting for it, each worth the QoE it would lose if not served over the next
`horizon_s` (the text its reader would miss: `max(0, horizon_s - slack) / V` tokens)
and weighing its KV blocks. It keeps the most valuable per block (greedy, as the paper
solves it), parks decoding requests it leaves out (at most `max_preemptions` per
decision, the paper's preemption cap) and resumes or admits those it takes.

Adapted (docs/routers.md says where the paper is silent): a new request is prefilled
on the prefill instance that gives its first token soonest; a hand-off waits for the
decode instance with the most free KV; the QoE value is in tokens of text, not divided
by each request's expected area (which needs its output length, unknown to a router).
"""
from __future__ import annotations

import numpy as np

from router.actions import Action, Handoff, Preempt, Resume
from router.policies.common import Headroom, blocks_needed_all, by, dispatch, most_slack
from router.policy import Policy
from router.snapshot import PREFILL, RequestTable, Snapshot

RUNNING, PARKED, WAITING = 0, 1, 2


class Andes(Policy):
    name = "andes"
    events = frozenset({"tick"})
    needs_running = True
    rules = {"knapsack": "park a decoding request the per-instance QoE knapsack leaves out"}

    def __init__(self, seed: int = 0, horizon_s: float = 2.0, max_preemptions: int = 4) -> None:
        super().__init__(seed)
        if not horizon_s > 0:
            raise ValueError(f"horizon_s: expected a number > 0, got {horizon_s!r}")
        if max_preemptions < 0:
            raise ValueError(f"max_preemptions: expected an integer >= 0, got {max_preemptions!r}")
        self.horizon_s, self.max_preemptions = horizon_s, max_preemptions
        self.homes: dict[int, int] = {}

    def decide(self, snapshot: Snapshot) -> list[Action]:
        headroom = Headroom(snapshot.instances)
        actions: list[Action] = []
        arriving = snapshot.to_dispatch
        actions += dispatch(snapshot, headroom, by(arriving.arrival_s + arriving.slo_column("ttft"), arriving.id))
        if not len(headroom.decode):
            return actions
        waiting = snapshot.to_hand_off
        local = snapshot.instances.role[waiting.instance.astype(np.int64)] != PREFILL
        actions += [Handoff(int(waiting.id[k]), int(waiting.instance[k])) for k in np.flatnonzero(local)]
        targets = self._targets(snapshot, headroom, waiting, local)
        preemptions = self.max_preemptions
        for position, instance in enumerate(headroom.decode):
            chosen = self._knapsack(snapshot, headroom, position, int(instance), waiting, targets == position)
            moves = self._apply(snapshot, headroom, int(instance), chosen, preemptions)
            preemptions -= sum(isinstance(a, Preempt) for a in moves)
            actions += moves
        return actions

    def choose_victim(self, snapshot: Snapshot, instance: int) -> int | None:
        return most_slack(snapshot, instance)

    def _targets(self, snapshot: Snapshot, headroom: Headroom, waiting: RequestTable, local: np.ndarray) -> np.ndarray:
        """The decode instance (a position in `headroom.decode`) each waiting hand-off
        waits for: the one with the most free KV, counting those placed before it."""
        free = headroom.rooms.copy()
        need = blocks_needed_all(waiting, snapshot.instances) + 1
        targets = np.full(len(waiting), -1)
        for k in by(waiting.slack_s, waiting.id):
            if not local[k]:
                targets[k] = int(np.argmax(free))
                free[targets[k]] -= need[k]
        return targets

    def _knapsack(self, snapshot: Snapshot, headroom: Headroom, position: int, instance: int,
                  waiting: RequestTable, mine: np.ndarray) -> list[tuple[int, int, bool]]:
        """(kind, row, kept) of every item on `instance`: its decoding requests, those
        parked there and the hand-offs waiting for it, the most valuable per block kept."""
        running = snapshot.running.get(instance)
        parked = snapshot.preempted
        at_home = np.fromiter((self.homes.get(int(r)) == instance for r in parked.id), bool, len(parked))
        groups = [(RUNNING, running, np.arange(len(running)) if running is not None else np.zeros(0, int)),
                  (PARKED, parked, np.flatnonzero(at_home)), (WAITING, waiting, np.flatnonzero(mine))]
        items, density, slack, blocks = [], [], [], []
        for kind, table, rows in groups:
            if table is None or not len(rows):
                continue
            held = blocks_needed_all(table, snapshot.instances)[rows] + 1
            lost = np.maximum(0.0, self.horizon_s - table.slack_s[rows]) / table.slo_column("v")[rows]
            items += [(kind, int(r)) for r in rows]
            density.append(lost / held)
            slack.append(table.slack_s[rows])
            blocks.append(held)
        if not items:
            return []
        density, slack, blocks = np.concatenate(density), np.concatenate(slack), np.concatenate(blocks)
        kinds = np.array([kind for kind, _ in items])
        capacity = headroom.rooms[position] + blocks[kinds == RUNNING].sum()
        kept = np.zeros(len(items), bool)
        for k in by(-density, kinds != RUNNING, slack):
            if blocks[k] <= capacity:
                kept[k], capacity = True, capacity - blocks[k]
        return [(kind, row, bool(keep)) for (kind, row), keep in zip(items, kept)]

    def _apply(self, snapshot: Snapshot, headroom: Headroom, instance: int, chosen, preemptions: int) -> list:
        """Park what is left out (at most `preemptions`, least valuable first as listed),
        then resume and admit what is kept while the KV freed so far has room for it."""
        actions: list[Action] = []
        room = headroom.rooms[headroom.position[instance]]
        running, parked, waiting = snapshot.running.get(instance), snapshot.preempted, snapshot.to_hand_off
        host = int(snapshot.instances.host_free_blocks[instance])
        for kind, row, keep in chosen:
            if kind == RUNNING and not keep and len(actions) < preemptions:
                held = int(blocks_needed_all(running[row:row + 1], snapshot.instances)[0]) + 1
                if held <= host:
                    self.homes[int(running.id[row])] = instance
                    host -= held
                    actions.append(Preempt(int(running.id[row]), "swap", "knapsack"))
        for kind, row, keep in chosen:
            if not keep or kind == RUNNING:
                continue
            table = parked if kind == PARKED else waiting
            request = table.row(row)
            need = int(blocks_needed_all(table[row:row + 1], snapshot.instances)[0]) + 1
            if kind == PARKED:
                del self.homes[request.id]
                actions.append(Resume(request.id, instance))
            elif need <= room:
                actions.append(Handoff(request.id, instance))
            else:
                continue
            room -= need
            headroom.give(instance, request)
        return actions
