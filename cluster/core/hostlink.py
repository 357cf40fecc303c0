"""An instance's host memory and the PCIe link to it, for parked requests: the router's
swaps (`Preempt(swap)`, `Resume`) copy KV over the link one after another while the
instance keeps stepping, as vLLM's offloading connector does on its own stream. A
swap out frees its GPU blocks when its copy is done; a swap in holds them from the
start and the request decodes once its copy is done."""
from __future__ import annotations

import math

from cluster.core.request import Request


class HostLink:
    def __init__(self, seconds_per_block: float, host_blocks: int | None) -> None:
        self.seconds_per_block = seconds_per_block
        self.free = math.inf if host_blocks is None else host_blocks
        self.idle_at = 0.0
        self.leaving: list[tuple[float, int]] = []
        self.returning: list[tuple[float, Request]] = []

    def _copy(self, blocks: int, now: float) -> float:
        self.idle_at = max(now, self.idle_at) + blocks * self.seconds_per_block
        return self.idle_at

    def store(self, request: Request, now: float) -> None:
        """Copy out a request's blocks (it keeps their count as what it holds on the host)."""
        self.free -= request.blocks
        self.leaving.append((self._copy(request.blocks, now), request.blocks))

    def load(self, request: Request, now: float) -> None:
        """Copy a parked request's blocks back (taken on the GPU already)."""
        self.free += request.blocks
        self.returning.append((self._copy(request.blocks, now), request))

    def next_done(self) -> float | None:
        times = [t for t, _ in self.leaving] + [t for t, _ in self.returning]
        return min(times) if times else None

    @property
    def leaving_blocks(self) -> int:
        return sum(blocks for _, blocks in self.leaving)

    def settle(self, now: float) -> tuple[int, list[Request]]:
        """The copies done by `now`: the GPU blocks the stores freed, the requests loaded."""
        freed = sum(blocks for done, blocks in self.leaving if done <= now)
        self.leaving = [(done, blocks) for done, blocks in self.leaving if done > now]
        back = [request for done, request in self.returning if done <= now]
        self.returning = [(done, request) for done, request in self.returning if done > now]
        return freed, back

    def forget(self, request: Request) -> bool:
        """Drop a request on its way back (its blocks there are the caller's to free)."""
        kept = [(done, r) for done, r in self.returning if r is not request]
        found = len(kept) < len(self.returning)
        self.returning = kept
        return found
