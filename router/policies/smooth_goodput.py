"""Smooth goodput: maximise the total benefit `n - alpha*f(idle)` of the seed paper.

A reader idles only once tokens come slower than they read (a decode step longer
than V) and the text already delivered is read. So a request goes to the decode
instance where it adds the least idle: the rise in the instance's idle rate,
(requests) x max(0, 1 - V / step time). New requests are dispatched to the fastest
prefill, those waiting longest first. At each tick, requests on an instance that
runs slower than its readers move to one with headroom, but only those whose
reading slack exceeds the predicted stall, largest slack first; when an instance
is about to run out of KV blocks, the request with the most slack is preempted.
Preempted requests are resumed first, wherever they fit. Nothing is ever abandoned.
"""
from __future__ import annotations

from router.actions import Action, Dispatch, Handoff, Migrate, Preempt, Resume
from router.policies.common import blocks_needed, by_instance, fastest_prefill, room, stays_local
from router.policy import Policy
from router.snapshot import DECODE, Instances, RequestView, Snapshot


def idle_rate(requests: int, step_s: float, v: float) -> float:
    """Seconds of reader idle per second across an instance's requests."""
    return requests * max(0.0, 1.0 - v / step_s) if step_s > 0 else 0.0


class SmoothGoodput(Policy):
    name = "smooth_goodput"
    events = frozenset({"tick"})
    needs_running = True

    def __init__(self, seed: int = 0, mode: str = "live", moves_per_tick: int = 2, live_stall_s: float = 0.005,
                 reserve_blocks: int = 0) -> None:
        super().__init__(seed)
        self.mode, self.moves_per_tick, self.live_stall_s = mode, moves_per_tick, live_stall_s
        self.reserve_blocks = reserve_blocks

    def decide(self, snapshot: Snapshot) -> list[Action]:
        instances, taken = snapshot.instances, {}
        actions: list[Action] = []
        for request in sorted(snapshot.preempted, key=lambda r: (-r.idle_s, r.id)):
            target = self._decode_target(instances, request, taken)
            if target is not None:
                actions.append(Resume(request.id, target))
        queued: dict[int, int] = {}
        for request in sorted(snapshot.to_dispatch, key=lambda r: (r.arrival_s, r.id)):
            target = fastest_prefill(snapshot, request, queued)
            if target is not None:
                actions.append(Dispatch(request.id, target))
        for request in sorted(snapshot.to_hand_off, key=lambda r: (-r.idle_s, r.id)):
            target = request.instance if stays_local(snapshot, request) else self._decode_target(instances, request, taken)
            if target is not None:
                actions.append(Handoff(request.id, target))
        if snapshot.event == "tick":
            actions += self._spend_slack(snapshot, taken)
        return actions

    def marginal_idle(self, instances: Instances, instance: int, request: RequestView) -> float:
        before = idle_rate(instances.running[instance], instances.step_time_s[instance], request.slo.v)
        after_step = instances.decode_step_s(instance, 1, request.context_tokens)
        return idle_rate(instances.running[instance] + 1, after_step, request.slo.v) - before

    def _decode_target(self, instances: Instances, request: RequestView, taken: dict[int, int],
                       exclude: int = -1) -> int | None:
        need = blocks_needed(request, instances)
        fits = [i for i in instances.serving(DECODE) if i != exclude and room(instances, i, taken) >= need]
        if not fits:
            return None
        target = min(fits, key=lambda i: (self.marginal_idle(instances, i, request), -room(instances, i, taken), i))
        taken[target] = taken.get(target, 0) + need
        return target

    def _spend_slack(self, snapshot: Snapshot, taken: dict[int, int]) -> list[Action]:
        instances, actions = snapshot.instances, []
        for source, requests in sorted(by_instance(snapshot.running).items()):
            roomy = sorted(requests, key=lambda r: (-r.slack_s, r.id))
            if room(instances, source, taken) < len(requests) + self.reserve_blocks and roomy \
                    and roomy[0].slack_s > instances.prefill_s(source, roomy[0].context_tokens):
                actions.append(Preempt(roomy[0].id, "recompute"))
                roomy = roomy[1:]
            slow = instances.step_time_s[source] > min(r.slo.v for r in requests)
            for request in roomy:
                if not slow or len(actions) >= self.moves_per_tick or request.slack_s <= self.live_stall_s:
                    break
                target = self._decode_target(instances, request, taken, exclude=source)
                if target is None:
                    break
                gain = self.marginal_idle(instances, target, request) - idle_rate(1, instances.step_time_s[source],
                                                                                  request.slo.v)
                if gain < 0:
                    actions.append(Migrate(request.id, target, self.mode))
        return actions
