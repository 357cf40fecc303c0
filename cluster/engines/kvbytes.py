"""KV bytes for emulated engines: payloads of the modelled size (times a scale, when
the real size would not fit this machine), cut from one pool of random bytes, so
that transfers move real data that the receiver can check. The pool never changes,
so a payload's checksum is computed once per slice."""
from __future__ import annotations

import numpy as np

from migration.transport import Packet, checksum

OFFSETS = 4096


class EmulatedKV:
    def __init__(self, bytes_per_token: float, scale: float = 1.0, seed: int = 0) -> None:
        self.bytes_per_token, self.scale, self.seed = bytes_per_token, scale, seed
        self.pool = np.zeros(0, dtype=np.uint8)
        self.checksums: dict[tuple[int, int], int] = {}

    def nbytes(self, tokens: int) -> int:
        return max(1, round(tokens * self.bytes_per_token * self.scale))

    def payload(self, request: int, first: int, tokens: int) -> np.ndarray:
        """The bytes standing for tokens [first, first + tokens) of a request's KV."""
        size = self.nbytes(tokens)
        if len(self.pool) < size + OFFSETS:
            grown = max(size + OFFSETS, 2 * len(self.pool), 1 << 20)
            self.pool = np.random.default_rng(self.seed).integers(0, 256, grown, dtype=np.uint8)
            self.checksums.clear()
        offset = (request * 7919 + first) % OFFSETS
        return self.pool[offset:offset + size]

    def packet(self, request: int, first: int, tokens: int) -> tuple[Packet, np.ndarray]:
        """The payload and its description (size and checksum)."""
        data = self.payload(request, first, tokens)
        key = ((request * 7919 + first) % OFFSETS, len(data))
        if key not in self.checksums:
            self.checksums[key] = checksum(data)
        return Packet(request, len(data), self.checksums[key]), data
