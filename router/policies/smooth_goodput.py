"""Smooth goodput: maximise the total benefit `n - alpha*f(idle)` of the seed paper.

A reader idles only once tokens come slower than they read (a decode step longer
than V) and the text already delivered is read. So a request goes to the decode
instance where it adds the least idle: the rise in the instance's idle rate,
(requests) x max(0, 1 - V / step time), among those with room for it and a block of
growth for each request already there (so that taking it does not force a
preemption). New requests are dispatched to the fastest prefill, by first-token
deadline (arrival + TTFT). A hand-off that finds no room gets it by parking requests
far ahead of their readers in host memory, each back before its reader runs dry
(`router.policies.parking`, `park: true`). At each tick, requests on an instance that
runs slower than its readers move to one with headroom, but only those whose reading
slack exceeds the predicted stall, largest slack first. When an engine runs out of KV,
it stops the request whose reader has the most text left (`choose_victim`). Nothing
is ever abandoned.
"""
from __future__ import annotations

import numpy as np

from router.actions import Action, Migrate, Resume
from router.policies.common import (
    Headroom,
    blocks_needed_all,
    busy_instances,
    by,
    dispatch,
    hand_off,
    migration_mode,
    most_slack,
)
from router.policies.parking import Parking
from router.policy import Policy
from router.snapshot import RequestView, Snapshot


PREFILL_ORDERS = ("deadline", "shortest", "response_ratio")


def idle_rate(requests, step_s, v: float):
    """Seconds of reader idle per second across an instance's requests."""
    step = np.maximum(step_s, 1e-12)
    return np.where(step_s > 0, requests * np.maximum(0.0, 1.0 - v / step), 0.0)


class SmoothGoodput(Policy):
    name = "smooth_goodput"
    events = frozenset({"tick"})
    needs_running = True
    rules = {"spend_slack": "migrate a request with slack to spare off an instance slower than its readers",
             "park_for_handoff": "park requests far ahead of their readers to admit a waiting hand-off",
             "park_for_return": "park requests to make room at home for a parked request due back"}

    def __init__(self, seed: int = 0, mode: str = "live", moves_per_tick: int = 2, live_stall_s: float = 0.005,
                 park: bool = True, park_margin_s: float = 0.5, min_park_s: float = 2.0,
                 parks_per_decision: int = 4, early_resume_below: float = 0.5, prefill_order: str = "deadline",
                 hold_s: float | None = None) -> None:
        super().__init__(seed)
        if prefill_order not in PREFILL_ORDERS:
            raise ValueError(f"prefill_order: expected one of {list(PREFILL_ORDERS)}, got {prefill_order!r}")
        if hold_s is not None and not hold_s >= 0:
            raise ValueError(f"hold_s: expected a number of seconds >= 0 (or null), got {hold_s!r}")
        self.prefill_order, self.hold_s = prefill_order, hold_s
        self.moves_per_tick, self.live_stall_s = moves_per_tick, live_stall_s
        self.mode = migration_mode(self.name, mode)
        self.parking = Parking(park_margin_s, min_park_s, parks_per_decision, early_resume_below) if park else None

    def decide(self, snapshot: Snapshot) -> list[Action]:
        headroom = Headroom(snapshot.instances)
        preempted, waiting = snapshot.preempted, snapshot.to_hand_off
        parked = self.parking.parked(preempted) if self.parking else np.zeros(len(preempted), bool)
        actions: list[Action] = []
        if self.parking:
            self.parking.asked.clear()
            actions += self.parking.resumes(snapshot, headroom, np.flatnonzero(parked))
        for request in sorted(preempted[np.flatnonzero(~parked)], key=lambda r: (-r.idle_s, r.id)):
            target = headroom.fastest_prefill(request)
            if target is not None:
                actions.append(Resume(request.id, target))
        actions += dispatch(snapshot, headroom, self._prefill_order(snapshot, headroom), self.hold_s)
        handed = hand_off(snapshot, headroom, by(-waiting.idle_s, waiting.id), self._decode_target)
        actions += handed
        if self.parking and len(handed) < len(waiting):
            left = np.flatnonzero(np.isin(waiting.id, [a.request for a in handed], invert=True))
            order = left[by(-waiting.idle_s[left], waiting.id[left])]
            actions += self.parking.make_room(snapshot, headroom, waiting, order)
        elif self.parking:
            actions += self.parking.resumes(snapshot, headroom, np.flatnonzero(parked), early=True)
        if snapshot.event == "tick":
            asked = self.parking.asked if self.parking else ()
            actions += [a for a in self._spend_slack(snapshot, headroom) if a.request not in asked]
        return actions

    def _prefill_order(self, snapshot: Snapshot, headroom: Headroom) -> np.ndarray:
        """New requests by first-token deadline, shortest prompt first, or highest response
        ratio first ((wait + prefill) / prefill: shortest first, but a long prompt's ratio
        grows while it waits, so no stream of shorter ones starves it)."""
        arriving = snapshot.to_dispatch
        if self.prefill_order == "shortest":
            return by(arriving.prompt_tokens, arriving.arrival_s, arriving.id)
        if self.prefill_order == "response_ratio" and len(headroom.prefill):
            own = np.maximum(headroom.prefill_s(arriving.prompt_tokens), 1e-9)
            ratio = (snapshot.now - arriving.arrival_s + own) / own
            return by(-ratio, arriving.arrival_s, arriving.id)
        return by(arriving.arrival_s + arriving.slo_column("ttft"), arriving.id)

    def choose_victim(self, snapshot: Snapshot, instance: int) -> int | None:
        """Out of KV: stop the request whose reader has the most text left to read."""
        return most_slack(snapshot, instance)

    def _marginal_idle(self, headroom: Headroom, positions: np.ndarray, request: RequestView) -> np.ndarray:
        v, batch = request.slo.v, headroom.batch[positions]
        before = idle_rate(batch, headroom.step_now[positions], v)
        return idle_rate(batch + 1, headroom.step_with(positions, request.context_tokens), v) - before

    def _decode_target(self, snapshot: Snapshot, headroom: Headroom, request: RequestView, exclude: int = -1) -> int | None:
        fits = headroom.fitting(request, exclude, growth=True)
        if not len(fits):
            return None
        order = np.lexsort((fits, -headroom.rooms[fits], self._marginal_idle(headroom, fits, request)))
        return int(headroom.decode[fits[order[0]]])

    def _spend_slack(self, snapshot: Snapshot, headroom: Headroom) -> list[Action]:
        """Screen all instances at once; only those slower than their readers are
        looked into. An instance's reading speed is its first request's V."""
        if snapshot.steps_within("v"):
            return []
        ids, groups = busy_instances(snapshot)
        if not len(ids):
            return []
        instances = snapshot.instances
        slow = instances.step_time_s[ids] > np.array([table.slo_column("v")[0] for table in groups])
        actions: list[Action] = []
        for index in np.flatnonzero(slow):
            actions += self._moves_off(snapshot, headroom, int(ids[index]), groups[index],
                                       self.moves_per_tick - len(actions))
            if len(actions) >= self.moves_per_tick:
                break
        return actions

    def _moves_off(self, snapshot: Snapshot, headroom: Headroom, source: int, table, budget: int) -> list[Action]:
        """Up to `budget` migrations off a slow instance: its requests by slack, the largest
        first, while they have more than `live_stall_s` and a target; each moves when its
        target would add less idle than it has at the source."""
        rows = by(-table.slack_s, table.id)
        rows = rows[table.slack_s[rows] > self.live_stall_s]
        actions: list[Action] = []
        while len(rows) and len(actions) < budget:
            targets, gains = self._targets(snapshot, headroom, table, rows, source)
            stuck = np.flatnonzero(targets < 0)
            moving = np.flatnonzero(gains[:stuck[0] if len(stuck) else len(rows)] < 0)
            if not len(moving):
                break
            request = table.row(rows[moving[0]])
            target = int(headroom.decode[targets[moving[0]]])
            actions.append(Migrate(request.id, headroom.give(target, request), self.mode, "spend_slack"))
            rows = rows[moving[0] + 1:]
        return actions

    def _targets(self, snapshot: Snapshot, headroom: Headroom, table, rows: np.ndarray, source: int):
        """`_decode_target` (a position in `headroom.decode`, -1 for none) of each of `rows`,
        and the idle rate each would add there less the one it has at `source`."""
        need = blocks_needed_all(table, snapshot.instances)[rows]
        fits = headroom.rooms[None, :] >= need[:, None] + headroom.batch[None, :]
        if source in headroom.position:
            fits[:, headroom.position[source]] = False
        a, b, c, batch, held = headroom._decode_columns[:5]
        v, context = table.slo_column("v")[rows][:, None], table.context_tokens[rows][:, None]
        step = a + b * (batch + 1) + c * (held[None, :] + context)
        marginal = np.where(fits, idle_rate(batch + 1, step, v) - idle_rate(batch, headroom.step_now, v), np.inf)
        best = fits & (marginal == marginal.min(axis=1, initial=np.inf)[:, None])
        rooms = np.where(best, headroom.rooms[None, :], -np.inf)
        best &= rooms == rooms.max(axis=1, initial=-np.inf)[:, None]
        targets = np.where(best.any(axis=1), best.argmax(axis=1), -1)
        chosen = marginal[np.arange(len(rows)), np.maximum(targets, 0)]
        return targets, chosen - idle_rate(1, snapshot.instances.step_time_s[source], v[:, 0])
