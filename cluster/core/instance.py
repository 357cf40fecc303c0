"""One serving instance: a vLLM-like scheduler (continuous batching, paged KV blocks
with a watermark, prefill-first or chunked prefill, recompute or swap preemption).

Runs of identical decode iterations are planned as one segment, so the cost of
simulating follows scheduling events, not tokens (`cluster.core.batch`: the decode
batch and the blocks its steps need; `cluster.core.blocks`: the free blocks).
"""
from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import deque

import numpy as np

from cluster.core.batch import DecodeBatch
from cluster.core.blocks import Blocks
from cluster.core.hostlink import HostLink
from cluster.core.request import FINISHED, HANDOFF, PREFILL_PIECE, PREFILLING, SWAPPED, WAITING, Request
from cluster.core.scheduling import HOST_FULL, InstanceSpec, Outcome, Segment, blocks_for
from cluster.hardware.noise import NoiseDraws
from router.snapshot import PREFILL


class Instance:
    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.id, self.role, self.perf, self.config = spec.id, spec.role, spec.perf, spec.scheduler
        self.blocks = Blocks(spec.total_blocks, spec.watermark_blocks)
        self.host = HostLink(spec.scheduler.block_size * spec.kv_bytes_per_token / spec.swap_bandwidth,
                             spec.host_blocks)
        self.batch = DecodeBatch(spec.id, spec.scheduler.block_size)
        self.running = self.batch.running
        self.waiting: deque[Request] = deque()
        self.swapped: deque[Request] = deque()
        self.arriving: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.step = 0
        self.step_end = array("d")
        self.segment: Segment | None = None
        self.busy_until = 0.0
        self.now = 0.0
        self.iterations = 0
        self.waiting_tokens = 0
        self.choose_victim = None
        noise = getattr(spec.perf, "noise", None)
        self.noise = NoiseDraws(noise, spec.noise_seed, spec.id) if noise is not None else None

    def _join(self, request: Request) -> None:
        self.blocks.give(self.batch.join(request, self.step))

    def _leave(self, request: Request) -> None:
        self.batch.leave(request, self.step)

    # ---- blocks and preemption -------------------------------------------
    def _copy(self, blocks: int) -> None:
        """A swap between GPU and host memory: the instance's next step waits for it."""
        self.busy_until = max(self.busy_until, self.now) + blocks * self.host.seconds_per_block

    def unpark(self, request: Request) -> None:
        """Forget a swapped-out request's KV: its host blocks come back."""
        self.host.free += request.blocks
        request.blocks = 0

    @property
    def free_soon(self) -> int:
        """Free KV blocks, counting those that swaps under way are freeing."""
        return self.blocks.free + self.host.leaving_blocks

    def _preempt(self, request: Request, outcome: Outcome) -> None:
        """Out of blocks now: vLLM's swap (blocking: the next step waits for the copy) or recompute."""
        self._leave(request)
        if self.config.preemption == "swap" and self.host.free >= request.blocks:
            self._copy(request.blocks)
            self.blocks.give(request.blocks)
            self.host.free -= request.blocks
            request.state = SWAPPED
            self.swapped.append(request)
        else:
            self.blocks.release(request)
            request.context = 0
            request.state = WAITING
            self.waiting.appendleft(request)
            self.waiting_tokens += request.to_prefill
        outcome.preempted.append(request)

    def _make_room(self, outcome: Outcome) -> None:
        """Preempt while the blocks this step needs are not free: the router's choice
        when it makes one (`choose_victim(instance id, running requests)` gives a request
        id), else the latest arrival, as vLLM."""
        size = self.config.block_size
        while self.running and self.batch.residue[self.step % size] > self.blocks.free:
            chosen = self.choose_victim(self.id, self.running.values()) if self.choose_victim else None
            victim = self.running.get(chosen)
            if victim is None:
                victim = max(self.running.values(), key=lambda r: (r.arrival, r.id))
            self._preempt(victim, outcome)

    def steps_done(self, now: float | None = None) -> int:
        """Decode steps completed, counting by `now` those of the segment in flight."""
        segment = self.segment
        if now is None or segment is None or not segment.steps:
            return self.step
        return self.step + bisect_right(segment.ends, now)

    def step_times(self, first: int, stop: int) -> np.ndarray:
        """End times of decode steps [first, stop), completed or in the segment in flight."""
        done = np.frombuffer(self.step_end, dtype=np.float64)[first:min(stop, self.step)]
        if stop <= self.step:
            return done
        extra = np.asarray(self.segment.ends[max(first, self.step) - self.step:stop - self.step], dtype=np.float64)
        return np.concatenate([done, extra])

    def context_now(self, now: float | None = None) -> int:
        """Tokens of KV the decode batch holds after the steps done by `now`."""
        return self.batch.context_at(self.steps_done(now))

    def context_of(self, request: Request, now: float | None = None) -> int:
        """Tokens of KV a running request holds after the steps done by `now`."""
        return request.context + self.steps_done(now) - request.join_step

    def detach(self, request: Request) -> None:
        """Take a running request out of the batch at a boundary, keeping its KV here
        (the last stage of a live migration copies it away)."""
        self._leave(request)

    def preempt(self, request: Request, mode: str, now: float) -> float:
        """Preempt a running request at a boundary, as the router asked; returns the
        bytes swapped out (0 for recompute), or HOST_FULL, the request still running,
        when host memory has no room for a swap. The request leaves this instance."""
        if mode == "swap" and self.host.free < request.blocks:
            return HOST_FULL
        self._leave(request)
        if mode == "swap":
            self.host.store(request, now)
            return request.blocks * self.config.block_size * self.spec.kv_bytes_per_token
        self.blocks.release(request)
        request.context = 0
        return 0.0

    def resume_swapped(self, request: Request) -> None:
        request.state, request.instance = SWAPPED, self.id
        self.swapped.append(request)

    def reserve(self, blocks: int) -> bool:
        return self.blocks.reserve(blocks)

    def unreserve(self, blocks: int) -> None:
        self.blocks.give(blocks)

    def release(self, request: Request) -> None:
        """A request whose KV left this instance (handed off or migrated) frees its blocks here."""
        self.blocks.release(request)

    # ---- what the runtime calls ------------------------------------------
    def enqueue(self, request: Request) -> None:
        request.state, request.instance = WAITING, self.id
        self.waiting.append(request)
        self.waiting_tokens += request.to_prefill

    def admit_decode(self, request: Request, blocks: int) -> None:
        """A request whose KV arrived here (`blocks` already reserved) joins at the next boundary."""
        request.blocks, request.instance = blocks, self.id
        self.arriving.append(request)

    def remove(self, request: Request) -> None:
        """Take a request out of this instance wherever it is, freeing its blocks."""
        if request.id in self.running:
            self._leave(request)
        if request in self.waiting:
            self.waiting.remove(request)
            self.waiting_tokens -= request.to_prefill
        for queue in (self.swapped, self.arriving):
            if request in queue:
                queue.remove(request)
        if request in self.prefilling:
            self.prefilling.remove(request)
        if not self.host.forget(request) and request.state == SWAPPED:
            self.unpark(request)
        self.blocks.release(request)

    @property
    def idle(self) -> bool:
        return self.segment is None

    def load(self) -> tuple[int, int, int]:
        """Queued requests, the prompt tokens still to prefill (queued, and those of
        prefills under way: a router's wait estimates start from them; chunked prefill
        keeps those in `prefilling`, else they are the segment's), and the decode batch size."""
        tokens = self.waiting_tokens
        if self.prefilling:
            tokens += sum(r.to_prefill - r.prefilled for r in self.prefilling)
        elif self.segment is not None and self.segment.prefill:
            tokens += sum(r.to_prefill - r.prefilled for r, _ in self.segment.prefill)
        queued = len(self.waiting) + len(self.swapped) + len(self.arriving) + len(self.host.returning)
        return queued, tokens, len(self.running)

    # ---- planning ---------------------------------------------------------
    def schedule(self, now: float, outcome: Outcome) -> float | None:
        """Choose the next batch at boundary `now`; returns when it ends, or None if idle."""
        self.now = now
        freed, back = self.host.settle(now)
        self.blocks.give(freed)
        outcome.stored += freed
        for request in back:
            self._join(request)
        self._make_room(outcome)
        self._swap_in()
        while self.arriving and len(self.running) + len(self.prefilling) < self.config.max_num_seqs:
            request = self.arriving.popleft()
            self._join(request)
        self._make_room(outcome)
        prefill = self._admit_prefills()
        if self.config.chunked_prefill:
            chunks = self._chunks(prefill)
            if chunks or self.running:
                return self._start(now, steps=1, chunks=chunks)
        elif prefill:
            return self._start(now, steps=0, chunks=[(r, r.to_prefill - r.prefilled) for r in prefill])
        if not self.running:
            copy = self.host.next_done()
            self.segment = None if copy is None else Segment(self.step, 0, [max(now, copy)], [])
            return None if copy is None else self.segment.ends[0]
        return self._start(now, steps=self._decode_steps_until_event(), chunks=[])

    def _swap_in(self) -> None:
        while self.swapped and self.blocks.room(self.swapped[0].blocks) \
                and len(self.running) + len(self.host.returning) < self.config.max_num_seqs:
            request = self.swapped.popleft()
            self.blocks.take(request.blocks)
            self.host.load(request, self.now)

    def _admit_prefills(self) -> list[Request]:
        """FCFS admission of waiting requests that fit the batch, the token budget and the KV blocks."""
        config, admitted, tokens = self.config, [], 0
        busy = len(self.running) + len(self.prefilling)
        budget = config.max_num_batched_tokens - (len(self.running) if config.chunked_prefill else 0)
        while self.waiting and busy + len(admitted) < config.max_num_seqs:
            request = self.waiting[0]
            need = blocks_for(request.to_prefill, config.block_size)
            size = request.to_prefill
            if not config.chunked_prefill and tokens + size > budget and admitted:
                break
            if config.chunked_prefill and tokens >= budget:
                break
            decoding = self.batch.residue[self.step % config.block_size] if config.chunked_prefill else 0
            if not self.blocks.room(need + decoding):
                break
            self.waiting.popleft()
            self.waiting_tokens -= size
            self.blocks.take(need)
            request.blocks, request.prefilled, request.state = need, 0, PREFILLING
            admitted.append(request)
            tokens += size
        return admitted

    def _chunks(self, admitted: list[Request]) -> list[tuple[Request, int]]:
        self.prefilling.extend(admitted)
        budget = self.config.max_num_batched_tokens - len(self.running)
        chunks = []
        for request in self.prefilling:
            if budget <= 0:
                break
            size = min(request.to_prefill - request.prefilled, budget)
            chunks.append((request, size))
            budget -= size
        return chunks

    def _decode_steps_until_event(self) -> int:
        """Steps until the next finish, or until the free blocks run out."""
        finish = self.batch.next_finish()
        end = finish + 1 if finish is not None else self.step + self.config.max_segment_steps
        steps = min(end - self.step, self.config.max_segment_steps)
        return max(1, self.batch.affordable(self.step, steps, self.blocks.free))

    def _start(self, now: float, steps: int, chunks: list[tuple[Request, int]]) -> float:
        """Time a segment: `steps` decode iterations (0: one prefill-only iteration), with
        prefill `chunks` riding on its first iteration."""
        model, batch, noise = self.perf, len(self.running), self.noise
        self.batch.sync(self.step)
        context = self.batch.context_base
        tokens = sum(size for _, size in chunks)
        squares = sum(size * (size + request.prefilled) for request, size in chunks)
        t = max(now, self.busy_until)
        ends = []
        if steps == 0:
            step = model.prefill_time(tokens, squares)
            t += step if noise is None else noise.time("prefill", step)
            ends.append(t)
        else:
            copy = self.host.next_done()
            copy = float("inf") if copy is None else copy
            step = model.step_time(tokens, squares, batch, context)
            t += step if noise is None else noise.time("mixed" if tokens else "decode", step)
            ends.append(t)
            for m in range(1, steps):
                if t >= copy:
                    steps = m
                    break
                step = model.decode_time(batch, context + m * batch)
                t += step if noise is None else noise.time("decode", step)
                ends.append(t)
        self.blocks.take(self.batch.crossings(self.step, self.step + steps))
        self.segment = Segment(self.step, steps, ends, chunks)
        return ends[-1]

    # ---- completing and cutting segments -----------------------------------
    def complete(self) -> Outcome:
        """Apply the segment that just ended: decode tokens, prefills done, finishes."""
        segment, outcome = self.segment, Outcome()
        self.segment = None
        if segment.steps or segment.prefill:
            self.iterations += len(segment.ends)
        if segment.steps:
            self.step_end.extend(segment.ends)
            self.step += segment.steps
        end = segment.ends[-1]
        for request, size in segment.prefill:
            request.prefilled += size
            if request.prefilled < request.to_prefill:
                continue
            if request in self.prefilling:
                self.prefilling.remove(request)
            request.context = request.to_prefill
            request.pieces.append((PREFILL_PIECE, end, 1))
            request.generated += 1
            if request.generated >= request.max_tokens:
                self._finish(request, outcome)
            elif self.role == PREFILL:
                request.state = HANDOFF
                outcome.prefilled.append(request)
            else:
                self._join(request)
        while (finish := self.batch.next_finish()) is not None and finish < self.step:
            request = self.batch.pop_finished()
            self._leave(request)
            self._finish(request, outcome)
        return outcome

    def _finish(self, request: Request, outcome: Outcome) -> None:
        self.blocks.release(request)
        request.state = FINISHED
        outcome.finished.append(request)

    def finish_by(self, time: float) -> Outcome | None:
        """The run ends at `time`: keep the steps of the segment in flight that ended by
        then and apply them; drop the rest."""
        segment = self.segment
        if segment is None:
            return None
        done = bisect_right(segment.ends, time)
        if segment.steps:
            self.blocks.give(self.batch.crossings(self.step + done, self.step + segment.steps))
            segment.steps = done
        del segment.ends[done:]
        if not done:
            self.segment = None
            return None
        return self.complete()

    def interrupt(self, now: float) -> float | None:
        """Something changed at `now`: end the current decode segment after the step in
        flight. Returns the new end, or None if the segment ends as planned."""
        segment = self.segment
        if segment is not None and not segment.steps and not segment.prefill and segment.ends[0] > now:
            segment.ends[0] = now
            return now
        if segment is None or segment.steps <= 1:
            return None
        for index, end in enumerate(segment.ends):
            if end >= now:
                break
        if index + 1 >= segment.steps:
            return None
        self.blocks.give(self.batch.crossings(self.step + index + 1, self.step + segment.steps))
        segment.steps = index + 1
        del segment.ends[index + 1:]
        return segment.ends[-1]
