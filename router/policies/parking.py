"""Parking: spending reading slack on decode KV memory.

A reader who is ahead of the text has slack: seconds of delivered tokens still to
read. While it lasts, the request's KV need not sit in GPU memory. Parking swaps it
out to host memory (`Preempt(swap)`) to make room for a hand-off that waits for
decode KV, and brings it back (`Resume` at its home instance) before its reader runs
dry: when its slack falls to the swap-in time, a decode step and `margin_s`. A
request is parked only when it would stay away at least `min_park_s` and its home has
host memory for it; a returning request has room made for it by parking others if
need be, and takes precedence over new hand-offs at its home.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from router.actions import Preempt, Resume
from router.policies.common import Headroom, blocks_needed_all, by
from router.snapshot import RequestTable, Snapshot


@dataclass
class Parking:
    margin_s: float = 0.5
    min_park_s: float = 2.0
    per_decision: int = 4
    early_below: float = 0.5
    """A parked request not yet due comes back early when no hand-off waits and its home's
    KV would be at most this share in use with it (and a block of growth per request)."""
    homes: dict[int, int] = field(default_factory=dict)
    """Requests this policy parked, and the instance holding their KV in host memory."""
    asked: set[int] = field(default_factory=set)
    """Requests asked to park in the decision under way."""

    def __post_init__(self) -> None:
        names = (("margin_s", "park_margin_s"), ("min_park_s", "min_park_s"), ("early_below", "early_resume_below"))
        for name, key in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{key}: expected a number >= 0, got {getattr(self, name)!r}")
        if self.per_decision < 1:
            raise ValueError(f"parks_per_decision: expected an integer >= 1, got {self.per_decision!r}")

    def parked(self, table: RequestTable) -> np.ndarray:
        """Which rows of `snapshot.preempted` this policy parked."""
        return np.fromiter((int(r) in self.homes for r in table.id), bool, len(table))

    def lead_s(self, snapshot: Snapshot, instances: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Slack a parked request needs left to be back in time: swap-in, a step, the margin."""
        i = snapshot.instances
        return i.swap_s_per_token[instances] * context + i.step_time_s[instances] + self.margin_s

    def resumes(self, snapshot: Snapshot, headroom: Headroom, rows: np.ndarray, early: bool = False) -> list:
        """Bring back the parked `rows` of `snapshot.preempted` that are due, least slack
        first, making room at home by parking others where it is short; with `early`,
        instead those not due whose home's KV would stay at most `early_below` in use."""
        table, actions = snapshot.preempted, []
        if not len(rows):
            return actions
        rows, need = self._candidates(snapshot, headroom, rows, early)
        homes = table.instance[rows]
        for k in by(table.slack_s[rows], table.id[rows]):
            home, request_id = int(homes[k]), int(table.id[rows[k]])
            at = headroom.position.get(home)
            room, batch = (headroom.rooms[at], headroom.batch[at]) if at is not None else (0, 0)
            short = need[k] + 1 - room
            total = snapshot.instances.total_blocks[home]
            if request_id not in self.homes or \
                    (early and total - room + need[k] + 1 + batch > self.early_below * total):
                continue
            if short > 0:
                actions += self.park(snapshot, headroom, home, short, "park_for_return")
            del self.homes[request_id]
            headroom.give(home, table.row(int(rows[k])))
            actions.append(Resume(request_id, home))
        return actions

    def _candidates(self, snapshot: Snapshot, headroom: Headroom, rows: np.ndarray,
                    early: bool) -> tuple[np.ndarray, np.ndarray]:
        """The `rows` `resumes` may bring back, and the blocks each needs: those due (with
        `early`, those not due whose home's KV is now light enough; each early return only
        fills its home, so none left out here could pass later in the same call)."""
        table, i = snapshot.preempted, snapshot.instances
        homes = table.instance[rows]
        need = blocks_needed_all(table, i)[rows]
        keep = (table.slack_s[rows] <= self.lead_s(snapshot, homes, table.context_tokens[rows])) != early
        if early:
            position = np.full(len(i.total_blocks), -1)
            position[headroom.decode] = np.arange(len(headroom.decode))
            at = position[homes]
            room = np.where(at >= 0, headroom.rooms[at], 0)
            batch = np.where(at >= 0, headroom.batch[at], 0)
            total = i.total_blocks[homes]
            keep &= total - room + need + 1 + batch <= self.early_below * total
        return rows[keep], need[keep]

    def make_room(self, snapshot: Snapshot, headroom: Headroom, waiting: RequestTable, rows: np.ndarray) -> list:
        """Park requests to make room for the hand-offs `rows` of `waiting` that found
        none, each on the decode instance where the fewest parks make it fit."""
        actions: list = []
        need = blocks_needed_all(waiting, snapshot.instances)
        for row in rows:
            best = None
            for position, instance in enumerate(headroom.decode):
                short = need[row] + headroom.batch[position] - headroom.rooms[position]
                victims = self.victims(snapshot, int(instance), short)
                if victims is not None and (best is None or len(victims) < len(best[1])):
                    best = (int(instance), victims)
            if best is None or len(actions) + len(best[1]) > self.per_decision:
                break
            actions += self._park_all(snapshot, headroom, *best, "park_for_handoff")
        return actions

    def park(self, snapshot: Snapshot, headroom: Headroom, instance: int, blocks: int, rule: str) -> list:
        victims = self.victims(snapshot, instance, blocks)
        return [] if victims is None else self._park_all(snapshot, headroom, instance, victims, rule)

    def victims(self, snapshot: Snapshot, instance: int, blocks: int) -> list[int] | None:
        """Rows of `snapshot.running[instance]` to park to free `blocks`, most slack first,
        among those that would stay away `min_park_s` and fit in host memory; None if
        they cannot free enough."""
        if blocks <= 0:
            return []
        table = snapshot.running.get(instance)
        if table is None or not len(table):
            return None
        i, context = snapshot.instances, table.context_tokens
        away = table.slack_s - 2 * i.swap_s_per_token[instance] * context - i.step_time_s[instance] - self.margin_s
        held = blocks_needed_all(table, i) + 1
        chosen, freed, host = [], 0, int(i.host_free_blocks[instance])
        for row in by(-table.slack_s, table.id):
            if away[row] < self.min_park_s:
                break
            if int(table.id[row]) in self.asked or held[row] > host:
                continue
            chosen.append(int(row))
            freed, host = freed + held[row], host - held[row]
            if freed >= blocks:
                return chosen
        return None

    def _park_all(self, snapshot: Snapshot, headroom: Headroom, instance: int, rows: list[int], rule: str) -> list:
        table, actions = snapshot.running[instance], []
        held = blocks_needed_all(table, snapshot.instances) + 1
        for row in rows:
            self.homes[int(table.id[row])] = instance
            self.asked.add(int(table.id[row]))
            if instance in headroom.position:
                k = headroom.position[instance]
                headroom.rooms[k] += held[row]
                headroom.batch[k] -= 1
                headroom.context[k] -= table.context_tokens[row]
            actions.append(Preempt(int(table.id[row]), "swap", rule))
        return actions
