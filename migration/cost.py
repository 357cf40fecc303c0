"""What moving a KV cache costs: `latency + per-stage overhead + bytes / bandwidth`,
and how a live migration stages it (at most `max_stages`, the last one, the stall,
once at most `final_stage_tokens` are left)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth > 0:
            raise ValueError(f"link {self.name}: bandwidth must be > 0 bytes/s, got {self.bandwidth!r}")
        if self.latency_s < 0:
            raise ValueError(f"link {self.name}: latency_s must be >= 0, got {self.latency_s!r}")


@dataclass(frozen=True)
class TransferCost:
    stage_overhead_s: float = 0.0005
    max_stages: int = 4
    final_stage_tokens: int = 16
