"""What moving a KV cache costs: `latency + per-stage overhead + bytes / bandwidth`,
and the stage plan of a live migration (copy while decoding, then a short stall)."""
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

    def seconds(self, nbytes: float, link: Link) -> float:
        """One stage over an uncontended link."""
        return link.latency_s + self.stage_overhead_s + nbytes / link.bandwidth

    def live_plan(self, context: int, bytes_per_token: float, link: Link, decode_step_s: float) -> list[int]:
        """Tokens copied per stage of a live migration of a request with `context`
        tokens that grows by one token per `decode_step_s` at the source while a
        stage is copied; the last stage is the stall. Ends when the tokens left
        fit in `final_stage_tokens` or after `max_stages`."""
        stages, pending = [], context
        while True:
            stages.append(pending)
            if pending <= self.final_stage_tokens or len(stages) >= self.max_stages:
                return stages
            seconds = self.seconds(pending * bytes_per_token, link)
            pending = max(1, int(seconds / decode_step_s)) if decode_step_s > 0 else 1
