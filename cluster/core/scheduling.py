"""What an instance's scheduler is told (its settings) and what its steps produce."""
from __future__ import annotations

from dataclasses import dataclass, field

from cluster.core.request import Request
from router.actions import PREEMPTION_MODES


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    watermark: float = 0.01
    chunked_prefill: bool = False
    preemption: str = "recompute"
    max_segment_steps: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_segment_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"scheduler.{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"scheduler.watermark: expected a fraction in [0, 1), got {self.watermark!r}")
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"scheduler.preemption: expected one of {list(PREEMPTION_MODES)}, got {self.preemption!r}")
        if self.chunked_prefill and self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("scheduler.max_num_batched_tokens: must be >= max_num_seqs with chunked prefill")


@dataclass(frozen=True)
class InstanceSpec:
    """One serving instance as configured: the simulator's scheduler and every engine
    are made from it. `perf` is its iteration-time model (`cluster.hardware.perfmodel`)."""
    id: int
    role: int
    perf: object
    scheduler: SchedulerConfig
    total_blocks: int
    kv_bytes_per_token: float
    swap_bandwidth: float
    host_blocks: int | None = None
    """KV blocks of host memory a request can be swapped out to (None: no limit)."""
    noise_seed: int = 0
    """Seeds the draws of `perf.noise`, where the model has one (with the instance's id)."""

    @property
    def watermark_blocks(self) -> int:
        return int(self.scheduler.watermark * self.total_blocks)


@dataclass
class Outcome:
    """What a finished segment did, for the runtime to act on."""
    prefilled: list[Request] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    stored: int = 0
    """GPU blocks freed by parked requests' copies to host memory."""


@dataclass
class Segment:
    start_step: int
    steps: int
    ends: list[float]
    prefill: list[tuple[Request, int]]


NOT_DECODING, HOST_FULL = -1.0, -2.0
"""What a preemption gives instead of the bytes it swapped out: the request was not
decoding, or host memory had no room for its KV (it carries on decoding)."""


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)
