"""Smooth goodput: maximise the total benefit `n - alpha*f(idle)` of the seed paper.

A reader idles only once tokens come slower than they read (a decode step longer
than V) and the text already delivered is read. So a request goes to the decode
instance where it adds the least idle: the rise in the instance's idle rate,
(requests) x max(0, 1 - V / step time), among those with room for it and a block of
growth for each request already there (so that taking it does not force a
preemption). New requests are dispatched to the fastest prefill, in arrival order.
At each tick, requests on an instance that runs slower than its readers move to one
with headroom, but only those whose reading slack exceeds the predicted stall,
largest slack first. It never preempts on its own: when an engine runs out of KV, it
stops the request whose reader has the most text left (`choose_victim`). A request
preempted by the router is re-prefilled on the fastest prefill instance, then handed
off again, so it never stalls a decode batch. Nothing is ever abandoned.
"""
from __future__ import annotations

import numpy as np

from router.actions import Action, Dispatch, Migrate, Resume
from router.policies.common import Headroom, busy_instances, hand_off, migration_mode
from router.policy import Policy
from router.snapshot import RequestView, Snapshot


def idle_rate(requests, step_s, v: float):
    """Seconds of reader idle per second across an instance's requests."""
    step = np.maximum(step_s, 1e-12)
    return np.where(step_s > 0, requests * np.maximum(0.0, 1.0 - v / step), 0.0)


class SmoothGoodput(Policy):
    name = "smooth_goodput"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, mode: str = "live", moves_per_tick: int = 2, live_stall_s: float = 0.005) -> None:
        super().__init__(seed)
        self.moves_per_tick, self.live_stall_s = moves_per_tick, live_stall_s
        self.mode = migration_mode(self.name, mode)

    def decide(self, snapshot: Snapshot) -> list[Action]:
        headroom = Headroom(snapshot.instances)
        actions: list[Action] = []
        for request in sorted(snapshot.preempted, key=lambda r: (-r.idle_s, r.id)):
            target = headroom.fastest_prefill(request)
            if target is not None:
                actions.append(Resume(request.id, target))
        for request in snapshot.to_dispatch:
            target = headroom.fastest_prefill(request)
            if target is not None:
                actions.append(Dispatch(request.id, target))
        waiting = sorted(snapshot.to_hand_off, key=lambda r: (-r.idle_s, r.id))
        actions += hand_off(snapshot, headroom, waiting, self._decode_target)
        if snapshot.event == "tick":
            actions += self._spend_slack(snapshot, headroom)
        return actions

    def choose_victim(self, snapshot: Snapshot, instance: int) -> int | None:
        """Out of KV: stop the request whose reader has the most text left to read."""
        running = snapshot.running.get(instance, ())
        return max(running, key=lambda r: (r.slack_s, r.id)).id if running else None

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
        ids, groups = busy_instances(snapshot)
        if not len(ids):
            return []
        instances = snapshot.instances
        slow = instances.step_time_s[ids] > np.array([requests[0].slo.v for requests in groups])
        actions: list[Action] = []
        for index in np.flatnonzero(slow):
            source = int(ids[index])
            for request in sorted(groups[index], key=lambda r: (-r.slack_s, r.id)):
                if len(actions) >= self.moves_per_tick or request.slack_s <= self.live_stall_s:
                    break
                target = self._decode_target(snapshot, headroom, request, exclude=source)
                if target is None:
                    break
                gain = self._marginal_idle(headroom, np.array([headroom.position[target]]), request)[0] \
                    - idle_rate(1, instances.step_time_s[source], request.slo.v)
                if gain < 0:
                    actions.append(Migrate(request.id, headroom.give(target, request), self.mode))
            if len(actions) >= self.moves_per_tick:
                break
        return actions
