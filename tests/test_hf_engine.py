"""The `hf` engine: a transformers Llama over the project's paged KV cache, driven
through the engine port. Its greedy tokens equal transformers' own `generate`, with
or without chunked prefill, after a P->D handoff of its KV, after a swap; aborts,
preemptions and failed transfers give every block back."""
from __future__ import annotations

import pytest

from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec, SchedulerConfig, blocks_for
from cluster.engines.hf_engine import HFEngine
from cluster.hardware.perfmodel import IterationModel
from migration.transport import verify
from router.snapshot import COLOCATED, DECODE, PREFILL

FLAT = IterationModel(prefill=(0.001, 0.0, 0.0), decode=(0.001, 0.0, 0.0))
BLOCKS, BLOCK = 64, 16


def engine(path: str, role: int = COLOCATED, **scheduler) -> HFEngine:
    return HFEngine(InstanceSpec(0, role, FLAT, SchedulerConfig(block_size=BLOCK, **scheduler), BLOCKS, 2048.0, 1e9),
                    path)


def run(engine: HFEngine, until=lambda engine: False, steps: int = 10_000) -> dict[int, list[int]]:
    """Step until nothing is left to do (or `until`); the token ids each request got."""
    tokens: dict[int, list[int]] = {}
    now = 0.0
    for _ in range(steps):
        if until(engine):
            break
        end = engine.begin(now)
        if end is None:
            break
        result = engine.finish()
        for request_id, token in zip(result.tokens, result.token_ids):
            tokens.setdefault(request_id, []).append(token)
        now = end
    return tokens


def all_free(engine: HFEngine) -> bool:
    stats = engine.stats()
    return stats["free_blocks"] == stats["pool_free_blocks"] == stats["total_blocks"]


@pytest.mark.parametrize("chunked", [False, True])
def test_greedy_tokens_equal_transformers_generate(tiny_model, greedy, chunked):
    hf = engine(tiny_model, chunked_prefill=chunked, max_num_batched_tokens=48 if chunked else 8192, max_num_seqs=8)
    shapes = {0: (5, 12), 1: (40, 20), 2: (100, 9), 3: (16, 30)}
    for request_id, (prompt, output) in shapes.items():
        hf.add(Request(request_id, "default", 0.0, prompt, output))
    tokens = run(hf)
    for request_id, (prompt, output) in shapes.items():
        assert tokens[request_id] == greedy(request_id, prompt, output), request_id
    assert all_free(hf)


def test_a_prompt_shorter_than_a_block_never_sees_another_requests_kv(tiny_model, greedy):
    hf = engine(tiny_model)
    hf.add(Request(0, "default", 0.0, 60, 40))
    run(hf)
    for request_id in (1, 2, 3):                        # reuse the blocks request 0 filled
        hf.add(Request(request_id, "default", 0.0, 3 + request_id, 10))
    tokens = run(hf)
    for request_id in (1, 2, 3):
        assert tokens[request_id] == greedy(request_id, 3 + request_id, 10)
    assert all_free(hf)


def hand_off(source: HFEngine, target: HFEngine, request_id: int) -> None:
    """What a handoff or the last stage of a migration does, through the port."""
    context = source.context_of(request_id)
    packet, data = source.export_kv(request_id, 0, context)
    moved = source.requests[request_id]
    blocks = blocks_for(context + 1, BLOCK)
    assert target.reserve(blocks)
    target.import_kv(request_id, 0, verify(packet, data.copy()))
    target.admit(Request(moved.id, moved.tenant, moved.arrival, moved.prompt, moved.max_tokens, moved.generated,
                         context=moved.context, output=list(moved.output)), blocks)
    source.release(request_id)


def test_a_handoff_continues_as_one_engine_would(tiny_model, greedy):
    prefill, decode = engine(tiny_model, PREFILL), engine(tiny_model, DECODE)
    shapes = {0: (7, 15), 1: (33, 25), 2: (64, 10)}
    for request_id, (prompt, output) in shapes.items():
        prefill.add(Request(request_id, "default", 0.0, prompt, output))
    first = run(prefill)
    for request_id in shapes:
        hand_off(prefill, decode, request_id)
    rest = run(decode)
    for request_id, (prompt, output) in shapes.items():
        assert first[request_id] + rest[request_id] == greedy(request_id, prompt, output)
    assert all_free(prefill) and all_free(decode)


def test_a_migration_mid_decode_continues_the_same_tokens(tiny_model, greedy):
    source, target = engine(tiny_model), engine(tiny_model)
    source.add(Request(0, "default", 0.0, 50, 40))
    before = run(source, until=lambda e: len(e.requests[0].output) >= 12)
    assert source.detach(0) is not None
    hand_off(source, target, 0)
    after = run(target)
    assert before[0] + after[0] == greedy(0, 50, 40)
    assert all_free(source) and all_free(target)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_preempted_request_resumes_with_the_same_tokens(tiny_model, greedy, mode):
    hf = engine(tiny_model)
    hf.add(Request(0, "default", 0.0, 30, 30))
    hf.add(Request(1, "default", 0.0, 20, 30))
    before = run(hf, until=lambda e: len(e.requests[0].output) >= 10)
    assert hf.preempt(0, mode, 0.0) is not None
    middle = run(hf, until=lambda e: len(e.requests[1].output) >= 20)
    assert hf.resume(0)
    after = run(hf)
    assert before[0] + after[0] == greedy(0, 30, 30)
    assert before[1] + middle[1] + after[1] == greedy(1, 20, 30)
    assert all_free(hf)


def test_aborts_and_failed_transfers_give_every_block_back(tiny_model):
    hf = engine(tiny_model)
    for request_id in range(3):
        hf.add(Request(request_id, "default", 0.0, 40, 50))
    run(hf, until=lambda e: all(len(e.requests[i].output) >= 5 for i in range(3)))
    hf.abort(0)
    assert hf.preempt(1, "swap", 0.0) is not None
    hf.abort(1)
    donor = engine(tiny_model)
    donor.add(Request(9, "default", 0.0, 40, 50))
    run(donor, until=lambda e: len(e.requests[9].output) >= 3)
    packet, data = donor.export_kv(9, 0, 20)
    assert hf.reserve(4)
    hf.import_kv(9, 0, data)
    hf.unreserve(9, 4)                                  # the transfer failed: the reservation goes
    hf.abort(2)
    assert all_free(hf) and not hf.incoming and not hf.swapped_kv
