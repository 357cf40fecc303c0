"""A paged KV cache that the project owns: per layer, key and value tensors of
`blocks * block_size` token slots, a block table per request and a free list. KV
leaves and enters as numpy arrays of shape (2, layers, tokens, kv_heads, head_dim),
so migrations move real tensors over the transports of `migration/`."""
from __future__ import annotations

import numpy as np
import torch


class KVPool:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (layers, blocks * block_size, kv_heads, head_dim)
        self.keys, self.values = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        self.block_size, self.total_blocks = block_size, blocks
        self.free: list[int] = list(range(blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self.free)

    def ensure(self, request: int, tokens: int) -> None:
        """Give a request blocks for `tokens` tokens of KV."""
        table = self.tables.setdefault(request, [])
        need = -(-tokens // self.block_size) - len(table)
        if need > len(self.free):
            raise MemoryError(f"KV pool: request {request} needs {need} more blocks, {len(self.free)} free")
        table.extend(self.free.pop() for _ in range(max(0, need)))

    def drop(self, request: int) -> None:
        self.free.extend(reversed(self.tables.pop(request, [])))

    def holds(self, request: int) -> int:
        return len(self.tables.get(request, ()))

    def slots(self, request: int, first: int, stop: int) -> torch.Tensor:
        """Flat slot indices of tokens [first, stop) of a request."""
        table = torch.tensor(self.tables[request], dtype=torch.long)
        positions = torch.arange(first, stop)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def read(self, request: int, first: int, tokens: int) -> np.ndarray:
        slots = self.slots(request, first, first + tokens)
        return torch.stack([self.keys[:, slots], self.values[:, slots]]).numpy()

    def write(self, request: int, first: int, kv: np.ndarray) -> None:
        """Store KV of tokens [first, first + len) (the request's blocks must cover them)."""
        slots = self.slots(request, first, first + kv.shape[2])
        tensor = torch.from_numpy(np.array(kv, copy=True))
        self.keys[:, slots], self.values[:, slots] = tensor[0], tensor[1]
