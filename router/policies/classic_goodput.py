"""Classic goodput: maximise the share of requests that meet `ttft_tbt` (or
`ttft_tpot`), as eq. 5 of the seed paper rewards.

Most urgent first: new requests in order of their TTFT deadline, those already late
last. Hand-off to a decode instance that stays within TBT with the request (the most
headroom first); when none does, to one already over TBT, whose requests are lost
anyway. At each tick, an instance over TBT is rescued: requests still meeting
their SLO migrate to instances with headroom, those that already missed are
preempted to shed load and resumed only where they fit. With `abandon`, requests
that missed, or are predicted to miss their TTFT, are rejected instead.
"""
from __future__ import annotations

from router.actions import Action, Dispatch, Handoff, Migrate, Preempt, Reject, Resume
from router.policies.common import blocks_needed, by_instance, first_token_s, room, stays_local
from router.policy import Policy
from router.snapshot import DECODE, PREFILL, Instances, RequestView, Snapshot

SCHEMES = ("ttft_tbt", "ttft_tpot")


class ClassicGoodput(Policy):
    name = "classic_goodput"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, scheme: str = "ttft_tbt", abandon: bool = False, mode: str = "live",
                 moves_per_tick: int = 2) -> None:
        super().__init__(seed)
        if scheme not in SCHEMES:
            raise ValueError(f"classic_goodput.scheme: expected one of {list(SCHEMES)}, got {scheme!r}")
        self.scheme, self.abandon, self.mode, self.moves_per_tick = scheme, abandon, mode, moves_per_tick

    def _limit(self, request: RequestView) -> float:
        return request.slo.tbt if self.scheme == "ttft_tbt" else request.slo.tpot

    def decide(self, snapshot: Snapshot) -> list[Action]:
        actions = self._dispatch(snapshot)
        taken: dict[int, int] = {}
        for request in sorted(snapshot.to_hand_off, key=lambda r: (r.missed, r.arrival_s)):
            if stays_local(snapshot, request):
                actions.append(Handoff(request.id, request.instance))
                continue
            target = self._decode_target(snapshot.instances, request, taken)
            if target is not None:
                taken[target] = taken.get(target, 0) + blocks_needed(request, snapshot.instances)
                actions.append(Handoff(request.id, target))
        actions += self._preempted(snapshot, taken)
        if snapshot.event == "tick":
            actions += self._rescue(snapshot, taken)
        return actions

    def _dispatch(self, snapshot: Snapshot) -> list[Action]:
        instances, queued, actions = snapshot.instances, {}, []
        candidates = instances.serving(PREFILL)
        for request in sorted(snapshot.to_dispatch, key=lambda r: (r.missed, r.arrival_s + r.slo.ttft, r.id)):
            if not candidates:
                break
            target = min(candidates, key=lambda i: (first_token_s(instances, i, request, queued), i))
            predicted = snapshot.now + first_token_s(instances, target, request, queued) - request.arrival_s
            if self.abandon and (request.missed or predicted > request.slo.ttft):
                actions.append(Reject(request.id, "abandoned: misses its TTFT"))
                continue
            queued[target] = queued.get(target, 0) + request.prompt_tokens
            actions.append(Dispatch(request.id, target))
        return actions

    def _decode_target(self, instances: Instances, request: RequestView, taken: dict[int, int]) -> int | None:
        need = blocks_needed(request, instances)
        fits = [i for i in instances.serving(DECODE) if room(instances, i, taken) >= need]
        if not fits:
            return None
        limit = self._limit(request)
        step = {i: instances.decode_step_s(i, 1, request.context_tokens) for i in fits}
        within = [i for i in fits if step[i] <= limit]
        if within:
            return min(within, key=lambda i: (step[i], i))
        lost = [i for i in fits if instances.step_time_s[i] > limit]
        return max(lost or fits, key=lambda i: (instances.step_time_s[i], -i))

    def _preempted(self, snapshot: Snapshot, taken: dict[int, int]) -> list[Action]:
        actions: list[Action] = []
        for request in sorted(snapshot.preempted, key=lambda r: (r.missed, r.arrival_s)):
            if self.abandon and request.missed:
                actions.append(Reject(request.id, "abandoned: missed its SLO"))
                continue
            instances = snapshot.instances
            fits = [i for i in instances.serving(DECODE) if room(instances, i, taken) >= blocks_needed(request, instances)
                    and instances.decode_step_s(i, 1, request.context_tokens) <= self._limit(request)]
            if fits:
                target = min(fits, key=lambda i: (instances.step_time_s[i], i))
                taken[target] = taken.get(target, 0) + blocks_needed(request, instances)
                actions.append(Resume(request.id, target))
        return actions

    def _rescue(self, snapshot: Snapshot, taken: dict[int, int]) -> list[Action]:
        instances, actions = snapshot.instances, []
        for source, requests in sorted(by_instance(snapshot.running).items()):
            if len(actions) >= self.moves_per_tick or instances.step_time_s[source] <= self._limit(requests[0]):
                continue
            for request in sorted(requests, key=lambda r: (r.missed, r.arrival_s)):
                if len(actions) >= self.moves_per_tick:
                    break
                if request.missed:
                    actions.append(Preempt(request.id, "recompute"))
                    continue
                target = self._decode_target(instances, request, taken)
                if target is not None and target != source and \
                        instances.decode_step_s(target, 1, request.context_tokens) <= self._limit(request):
                    taken[target] = taken.get(target, 0) + blocks_needed(request, instances)
                    actions.append(Migrate(request.id, target, self.mode))
        return actions
