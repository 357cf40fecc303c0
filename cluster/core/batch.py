"""An instance's decode batch: the requests it decodes, each gaining one token per
decode step from the step it joined (its tokens are the instance's decode-step end
times from then). A request needs a new KV block every `block_size` steps, at steps
of one residue modulo the block size, so the blocks a run of steps needs are counted
per residue, not per request; the KV the batch holds is kept as one running sum."""
from __future__ import annotations

import heapq

import numpy as np

from cluster.core.request import DECODING, Request
from cluster.core.scheduling import blocks_for


class DecodeBatch:
    def __init__(self, instance: int, block_size: int) -> None:
        self.instance, self.block_size = instance, block_size
        self.running: dict[int, Request] = {}
        self.rows: dict[int, tuple[int, int, int]] = {}
        self.columns: tuple[np.ndarray, ...] | None = None
        self.residue = [0] * block_size
        self.finishes: list[tuple[int, float, int, int]] = []
        self.context_base = 0
        self.context_step = 0

    def __len__(self) -> int:
        return len(self.running)

    def sync(self, step: int) -> None:
        self.context_base += (step - self.context_step) * len(self.running)
        self.context_step = step

    def context_at(self, step: int) -> int:
        """Tokens of KV the batch holds after `step` decode steps."""
        return self.context_base + (step - self.context_step) * len(self.running)

    def join(self, request: Request, step: int) -> int:
        """Add a request at `step`; returns the blocks it held beyond its KV (now free)."""
        self.sync(step)
        request.state, request.instance = DECODING, self.instance
        request.join_step, request.join_generated = step, request.generated
        request.epoch += 1
        self.running[request.id] = request
        self.rows[request.id] = (request.slot, step, request.generated)
        self.columns = None
        self.context_base += request.context
        finish = step + request.max_tokens - request.generated - 1
        heapq.heappush(self.finishes, (finish, request.arrival, request.id, request.epoch))
        spare = max(0, request.blocks - blocks_for(request.context, self.block_size))
        request.blocks -= spare
        request.first_crossing = step + request.blocks * self.block_size - request.context
        self.residue[request.first_crossing % self.block_size] += 1
        return spare

    def blocks_of(self, request: Request, upto: int) -> int:
        """A running request's blocks: those it joined with and one per crossing before `upto`."""
        span = upto - request.first_crossing
        return request.blocks + (-(-span // self.block_size) if span > 0 else 0)

    def leave(self, request: Request, step: int) -> None:
        """Take a request out at `step`, settling its tokens, context and blocks."""
        self.sync(step)
        done = step - request.join_step
        if done:
            request.pieces.append((self.instance, request.join_step, done))
        request.generated = request.join_generated + done
        request.context += done
        self.context_base -= request.context
        request.blocks = self.blocks_of(request, step)
        self.residue[request.first_crossing % self.block_size] -= 1
        del self.running[request.id]
        del self.rows[request.id]
        self.columns = None
        request.epoch += 1

    def slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request decoding, in the order they joined: its slot, the step it joined at
        and the tokens it had then."""
        if self.columns is None:
            rows = np.array(list(self.rows.values()), dtype=np.int64).reshape(-1, 3)
            self.columns = rows[:, 0], rows[:, 1], rows[:, 2]
        return self.columns

    def crossings(self, start: int, stop: int) -> int:
        """New blocks the batch needs over steps [start, stop)."""
        size = self.block_size
        cycles = (stop - start) // size
        total = cycles * len(self.running)
        for step in range(start + cycles * size, stop):
            total += self.residue[step % size]
        return total

    def affordable(self, step: int, steps: int, free: int) -> int:
        """The most of `steps` decode steps from `step` whose new blocks `free` blocks cover."""
        if not self.running or self.crossings(step, step + steps) <= free:
            return steps
        size, left = self.block_size, free
        cycles = min(left // len(self.running), steps // size)
        left -= cycles * len(self.running)
        k = cycles * size
        while k < steps and self.residue[(step + k) % size] <= left:
            left -= self.residue[(step + k) % size]
            k += 1
        return k

    def next_finish(self) -> int | None:
        """The step at which the next request finishes (its last token's step)."""
        heap = self.finishes
        while heap:
            request = self.running.get(heap[0][2])
            if request is not None and request.epoch == heap[0][3]:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def pop_finished(self) -> Request:
        return self.running[heapq.heappop(self.finishes)[2]]
