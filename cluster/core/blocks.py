"""An instance's KV blocks: how many are free, and the watermark that admitting new
work keeps free (vLLM's `watermark`); a request's `blocks` are the ones it holds."""
from __future__ import annotations

from cluster.core.request import Request


class Blocks:
    __slots__ = ("total", "free", "watermark")

    def __init__(self, total: int, watermark: int) -> None:
        self.total, self.free, self.watermark = total, total, watermark

    def room(self, blocks: int) -> bool:
        """Whether taking `blocks` more keeps the watermark free."""
        return self.free - blocks >= self.watermark

    def reserve(self, blocks: int) -> bool:
        """Take `blocks` if that keeps the watermark free."""
        if self.free - blocks < self.watermark:
            return False
        self.free -= blocks
        return True

    def take(self, blocks: int) -> None:
        self.free -= blocks

    def give(self, blocks: int) -> None:
        self.free += blocks

    def release(self, request: Request) -> None:
        """The request's blocks come back."""
        self.free += request.blocks
        request.blocks = 0
