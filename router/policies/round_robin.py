"""Round-robin: new requests to prefill instances in turn, prefilled ones to decode instances in turn."""
from __future__ import annotations

from router.actions import Action, Dispatch, Handoff
from router.policy import Policy
from router.snapshot import DECODE, PREFILL, Snapshot


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.next_prefill = 0
        self.next_decode = 0

    def decide(self, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        prefill = snapshot.instances.serving(PREFILL)
        for request in snapshot.to_dispatch:
            if len(prefill):
                actions.append(Dispatch(request.id, prefill[self.next_prefill % len(prefill)]))
                self.next_prefill += 1
        decode = snapshot.instances.serving(DECODE)
        for request in snapshot.to_hand_off:
            if snapshot.instances.role[request.instance] != PREFILL:
                actions.append(Handoff(request.id, request.instance))
            elif len(decode):
                actions.append(Handoff(request.id, decode[self.next_decode % len(decode)]))
                self.next_decode += 1
        return actions
