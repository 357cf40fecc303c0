"""A request's state inside a runtime, with its delivered tokens kept compactly as
pieces in the order they came: `(PREFILL_PIECE, time, 1)` for the token a prefill
produced, `(instance, first step, count)` for a run of an instance's decode steps.
A real engine keeps the token ids it generated in `output` (a recompute starts from them);
`prompt_ids` are the prompt's own when a client sent text (else an engine makes them)."""
from __future__ import annotations

from dataclasses import dataclass, field

from cluster.core.tables import ABORTED, FINISHED, REJECTED

WAITING, PREFILLING, HANDOFF, TRANSFER, DECODING, SWAPPED = "waiting", "prefilling", "handoff", "transfer", "decoding", "swapped"
PREEMPTED, MIGRATING = "preempted", "migrating"
FINAL = (FINISHED, ABORTED, REJECTED)
PREFILL_PIECE = -1


@dataclass(slots=True, eq=False)
class Request:
    id: int
    tenant: str
    arrival: float
    prompt: int
    max_tokens: int
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
    pieces: list[tuple[int, float, int]] = field(default_factory=list)
    slot: int = -1
    fed: tuple[int, int] = (0, 0)
    reason: str = ""
    output: list[int] = field(default_factory=list)
    prompt_ids: list[int] | None = None

    @property
    def to_prefill(self) -> int:
        """Tokens whose KV must be computed before decoding: the prompt and what was already delivered."""
        return self.prompt + self.generated

    @property
    def final(self) -> bool:
        return self.state in FINAL
