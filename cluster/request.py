"""A request's state inside a runtime, with its delivered tokens kept compactly:
decode tokens as runs of an instance's decode iterations, prefill tokens as times."""
from __future__ import annotations

from dataclasses import dataclass, field

WAITING, PREFILLING, HANDOFF, TRANSFER, DECODING, SWAPPED = "waiting", "prefilling", "handoff", "transfer", "decoding", "swapped"
PREEMPTED, MIGRATING = "preempted", "migrating"
FINISHED, ABORTED, REJECTED, UNFINISHED = "finished", "aborted", "rejected", "unfinished"
FINAL = (FINISHED, ABORTED, REJECTED)


@dataclass(slots=True, eq=False)
class Request:
    id: int
    tenant: str
    arrival: float
    prompt: int
    target: int
    generated: int = 0
    state: str = WAITING
    instance: int = -1
    blocks: int = 0
    context: int = 0
    prefilled: int = 0
    epoch: int = 0
    join_step: int = 0
    join_generated: int = 0
    first_crossing: int = 0
    prefill_times: list[float] = field(default_factory=list)
    decode_runs: list[tuple[int, int, int]] = field(default_factory=list)
    reason: str = ""

    @property
    def to_prefill(self) -> int:
        """Tokens whose KV must be computed before decoding: the prompt and what was already delivered."""
        return self.prompt + self.generated

    @property
    def final(self) -> bool:
        return self.state in FINAL
