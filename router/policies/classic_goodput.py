"""Classic goodput: maximise the share of requests that meet `ttft_tbt` (or
`ttft_tpot`), as eq. 5 of the seed paper rewards.

Most urgent first: new requests in order of their TTFT deadline, those already late
last. Hand-off to a decode instance that stays within TBT with the request (the most
headroom first); when none does, to one already over TBT, whose requests are lost
anyway. At each tick, an instance over TBT that still holds requests meeting their
SLO is rescued: those migrate to instances with headroom, those that already missed
are preempted to shed load and resumed where they fit, or on an idle instance. With `abandon`, requests
that missed, or are predicted to miss their TTFT, are rejected instead.
"""
from __future__ import annotations

import numpy as np

from router.actions import Action, Dispatch, Migrate, Preempt, Reject, Resume
from router.policies.common import Headroom, busy_instances, by, hand_off, migration_mode
from router.policy import Policy
from router.snapshot import RequestView, Snapshot

SCHEMES = ("ttft_tbt", "ttft_tpot")


class ClassicGoodput(Policy):
    name = "classic_goodput"
    events = frozenset({"tick"})
    needs_running = True
    rules = {"abandon_new": "reject a new request predicted to miss its TTFT (with `abandon`)",
             "abandon_missed": "reject a preempted request that already missed its SLO (with `abandon`)",
             "shed": "preempt a request that already missed, off an instance over its limit",
             "rescue": "migrate a request still meeting its SLO off an instance over its limit"}

    def __init__(self, seed: int = 0, scheme: str = "ttft_tbt", abandon: bool = False, mode: str = "live",
                 moves_per_tick: int = 2) -> None:
        super().__init__(seed)
        if scheme not in SCHEMES:
            raise ValueError(f"classic_goodput.scheme: expected one of {list(SCHEMES)}, got {scheme!r}")
        self.scheme, self.abandon, self.moves_per_tick = scheme, abandon, moves_per_tick
        self.mode = migration_mode(self.name, mode)

    def _limit(self, request: RequestView) -> float:
        return request.slo.tbt if self.scheme == "ttft_tbt" else request.slo.tpot

    def _limits(self, table) -> np.ndarray:
        return table.slo_column("tbt" if self.scheme == "ttft_tbt" else "tpot")

    def decide(self, snapshot: Snapshot) -> list[Action]:
        headroom = Headroom(snapshot.instances)
        actions = self._dispatch(snapshot, headroom)
        waiting = snapshot.to_hand_off
        actions += hand_off(snapshot, headroom, by(waiting.missed, waiting.arrival_s), self._decode_target)
        actions += self._preempted(snapshot, headroom)
        if snapshot.event == "tick":
            actions += self._rescue(snapshot, headroom)
        return actions

    def choose_victim(self, snapshot: Snapshot, instance: int) -> int | None:
        """Out of KV: give up first on a request that already missed, the latest such."""
        table = snapshot.running.get(instance)
        missed = np.flatnonzero(table.missed) if table is not None else []
        if not len(missed):
            return None
        return int(table.id[missed[by(table.arrival_s[missed], table.id[missed])[-1]]])

    def _dispatch(self, snapshot: Snapshot, headroom: Headroom) -> list[Action]:
        actions: list[Action] = []
        for request in sorted(snapshot.to_dispatch, key=lambda r: (r.missed, r.arrival_s + r.slo.ttft, r.id)):
            if self.abandon:
                waits = headroom.first_token_s(request) if len(headroom.prefill) else np.array([np.inf])
                if request.missed or snapshot.now + waits.min() - request.arrival_s > request.slo.ttft:
                    actions.append(Reject(request.id, "abandoned: misses its TTFT", "abandon_new"))
                    continue
            target = headroom.fastest_prefill(request)
            if target is not None:
                actions.append(Dispatch(request.id, target))
        return actions

    def _decode_target(self, snapshot: Snapshot, headroom: Headroom, request: RequestView, exclude: int = -1,
                       within_only: bool = False) -> int | None:
        fits = headroom.fitting(request, exclude)
        if not len(fits):
            return None
        step = headroom.step_with(fits, request.context_tokens)
        limit = self._limit(request)
        within = step <= limit
        if within.any():
            return int(headroom.decode[fits[within][np.argmin(step[within])]])
        if within_only:
            return None
        now = headroom.step_now[fits]
        lost = now > limit
        pool, times = (fits[lost], now[lost]) if lost.any() else (fits, now)
        return int(headroom.decode[pool[np.argmax(times)]])

    def _preempted(self, snapshot: Snapshot, headroom: Headroom) -> list[Action]:
        actions: list[Action] = []
        table = snapshot.preempted
        hopeful = headroom.within(table, self._limits(table))
        for k in by(table.missed, table.arrival_s):
            if self.abandon and table.missed[k]:
                actions.append(Reject(int(table.id[k]), "abandoned: missed its SLO", "abandon_missed"))
                continue
            request = table.row(k)
            target = self._decode_target(snapshot, headroom, request, within_only=True) if hopeful[k] \
                else self._idle_target(headroom, request)
            if target is not None:
                actions.append(Resume(request.id, headroom.give(target, request)))
        return actions

    def _idle_target(self, headroom: Headroom, request: RequestView) -> int | None:
        """A decode instance with nothing to decode and room for `request`: a request
        no instance can serve within its limit still gets served, not left waiting."""
        fits = headroom.fitting(request)
        idle = fits[headroom.batch[fits] == 0]
        return int(headroom.decode[idle[0]]) if len(idle) else None

    def _rescue(self, snapshot: Snapshot, headroom: Headroom) -> list[Action]:
        if snapshot.steps_within("tbt" if self.scheme == "ttft_tbt" else "tpot"):
            return []
        ids, groups = busy_instances(snapshot)
        if not len(ids):
            return []
        limits = np.array([self._limit(table.row(0)) for table in groups])
        over = np.flatnonzero(snapshot.instances.step_time_s[ids] > limits)
        actions: list[Action] = []
        for index in over:
            source, table = int(ids[index]), groups[index]
            if table.missed.all():
                continue
            hopeful = headroom.within(table, self._limits(table), exclude=source)
            for k in by(table.missed, table.arrival_s):
                if len(actions) >= self.moves_per_tick:
                    return actions
                if table.missed[k]:
                    actions.append(Preempt(int(table.id[k]), "recompute", "shed"))
                    continue
                if not hopeful[k]:
                    continue
                request = table.row(k)
                target = self._decode_target(snapshot, headroom, request, exclude=source, within_only=True)
                if target is not None:
                    actions.append(Migrate(request.id, headroom.give(target, request), self.mode, "rescue"))
        return actions
