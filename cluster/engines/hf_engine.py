"""The `hf` backend: a transformers Llama behind the engine port, with a paged KV
cache the project owns. The scheduler is the model engine's (the simulator's
vLLM-like instance, one step at a time); each planned step is computed for real
(prefill chunks and the decode batch in one pass, greedy) and ends when the compute
does. KV leaves and arrives as real tensors, so handoffs and live migrations move
the model's own keys and values over the transports of `migration/`."""
from __future__ import annotations

import time

import numpy as np

from cluster.core.request import SWAPPED, Request
from cluster.core.scheduling import InstanceSpec
from cluster.engines.cpu import use_threads
from cluster.engines.model import ModelEngine
from cluster.engines.paged_llama import Chunk, PagedLlama
from cluster.engines.port import StepResult
from cluster.engines.prompts import check_token_ids, request_prompt
from migration.transport import Packet, describe


class HFEngine(ModelEngine):
    paced = False

    def __init__(self, spec: InstanceSpec, path: str, seed: int = 0, threads: int = 1) -> None:
        super().__init__(spec)
        self.llama = PagedLlama(path)
        self.pool = self.llama.pool(spec.total_blocks, spec.scheduler.block_size)
        self.seed, self.threads = seed, threads
        self.prompts: dict[int, list[int]] = {}
        self.incoming: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.swapped_kv: dict[int, np.ndarray] = {}
        self.produced: dict[int, int] = {}
        self.ended_s = 0.0

    def ids(self, request: Request) -> list[int]:
        if request.id not in self.prompts:
            self.prompts[request.id] = request_prompt(request, self.llama.vocab_size, self.seed)
        return self.prompts[request.id] + request.output

    def add(self, request: Request) -> None:
        check_token_ids(request)
        super().add(request)

    def begin(self, now: float) -> float | None:
        if super().begin(now) is None:
            return None
        use_threads(self.threads)
        started = time.monotonic()
        chunks = [self._prefill_chunk(request, size) for request, size in self.instance.segment.prefill]
        chunks += [self._decode_chunk(self.requests[request_id]) for request_id in self.decoding]
        self.produced = self.llama.step(chunks, self.pool) if chunks else {}
        self.ended_s = now + time.monotonic() - started
        return self.ended_s

    def _prefill_chunk(self, request: Request, size: int) -> Chunk:
        start = request.prefilled
        return Chunk(request.id, start, self.ids(request)[start:start + size], start + size >= request.to_prefill)

    def _decode_chunk(self, request: Request) -> Chunk:
        saved = self.swapped_kv.pop(request.id, None)
        if saved is not None:
            self.pool.ensure(request.id, saved.shape[2])
            self.pool.write(request.id, 0, saved)
        return Chunk(request.id, request.prompt + len(request.output) - 1, request.output[-1:])

    def finish(self) -> StepResult:
        result = super().finish()
        result.end_s = self.ended_s
        for request_id in result.tokens:
            token = self.produced[request_id]
            result.token_ids.append(token)
            self.requests[request_id].output.append(token)
        for request_id in result.finished:
            self.requests.pop(request_id, None)
            self.pool.drop(request_id)
        for request_id in result.preempted:
            self._evict(self.requests[request_id], self.requests[request_id].state == SWAPPED)
        return result

    def _evict(self, request: Request, keep: bool) -> None:
        """Free a request's blocks, keeping a copy of its KV when it is swapped out."""
        if keep and self.pool.holds(request.id):
            self.swapped_kv[request.id] = self.pool.read(request.id, 0, request.context)
        self.pool.drop(request.id)

    def abort(self, request_id: int) -> None:
        super().abort(request_id)
        self._forget(request_id)

    def _forget(self, request_id: int) -> None:
        self.pool.drop(request_id)
        for table in (self.incoming, self.swapped_kv, self.prompts):
            table.pop(request_id, None)

    def release(self, request_id: int) -> Request:
        request = super().release(request_id)
        self._forget(request_id)
        return request

    def preempt(self, request_id: int, mode: str, now: float) -> float | None:
        request = self.requests.get(request_id)
        nbytes = super().preempt(request_id, mode, now)
        if nbytes is not None and nbytes >= 0:
            self._evict(request, mode == "swap")
        return nbytes

    def unreserve(self, request_id: int, blocks: int) -> None:
        super().unreserve(request_id, blocks)
        self.incoming.pop(request_id, None)

    def admit(self, request: Request, blocks: int) -> None:
        super().admit(request, blocks)
        staged = self.incoming.pop(request.id, [])
        if staged:
            self.pool.ensure(request.id, request.context)
            for first, kv in staged:
                self.pool.write(request.id, first, kv)

    def export_kv(self, request_id: int, first: int, tokens: int) -> tuple[Packet, np.ndarray]:
        data = self.pool.read(request_id, first, tokens).reshape(-1).view(np.uint8)
        return describe(request_id, data), data

    def import_kv(self, request_id: int, first: int, data: np.ndarray) -> None:
        pool = self.pool
        kv = np.frombuffer(np.ascontiguousarray(data), np.float32).reshape(
            2, pool.keys.shape[0], -1, pool.keys.shape[2], pool.keys.shape[3]).copy()
        self.incoming.setdefault(request_id, []).append((first, kv))

    def stats(self) -> dict:
        return super().stats() | {"pool_free_blocks": self.pool.free_blocks}
