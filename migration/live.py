"""The live-migration protocol (as Llumnix): copy a request's KV in stages while the
source keeps decoding, stop it for a short last stage, then commit at the target.

Pure state, driven by a runtime: it asks what to copy next and reports what
arrived. A migration ends committed or aborted with one of ABORT_REASONS.
"""
from __future__ import annotations

from dataclasses import dataclass

from migration.cost import TransferCost

ABORT_REASONS = ("finished", "not decoding", "preempted", "target_full", "target_dead", "source_dead", "timeout",
                 "checksum", "transport", "missing", "cancelled")


@dataclass
class LiveMigration:
    request: int
    source: int
    target: int
    started_s: float
    cost: TransferCost
    reserved_blocks: int = 0
    stage: int = 0
    copied: int = 0
    copying: int = 0
    final: bool = False
    stall_start_s: float | None = None
    copy: int = 0
    """The copy in flight (a late answer to an earlier one is ignored)."""

    def next_stage(self, context: int) -> int:
        """Start the next stage for a source now holding `context` tokens of KV;
        returns the tokens to copy. Sets `final` when this stage is the last."""
        self.stage += 1
        self.copying = max(0, context - self.copied)
        self.final = self.copying <= self.cost.final_stage_tokens or self.stage >= self.cost.max_stages
        return self.copying

    def stage_done(self) -> None:
        self.copied += self.copying
        self.copying = 0
