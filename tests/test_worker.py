"""A worker steps its engine in real time and reports every step; as a Ray actor too."""
from __future__ import annotations

import threading
import time

import ray

from cluster.engine import ModelEngine, StepResult
from cluster.perfmodel import IterationModel
from cluster.request import Request
from cluster.scheduling import SchedulerConfig
from cluster.worker import Worker, WorkerActor
from router.snapshot import COLOCATED


def engine() -> ModelEngine:
    """Every step takes 10 ms, whatever the batch."""
    flat = IterationModel(prefill=(0.01, 0.0, 0.0), decode=(0.01, 0.0, 0.0))
    return ModelEngine(0, COLOCATED, flat, SchedulerConfig(), 1000, 1.0, 1e9)


def test_worker_waits_out_each_step_and_reports_every_token():
    results: list[tuple[float, StepResult]] = []
    done = threading.Event()
    worker = Worker(engine(), lambda r: (results.append((time.monotonic(), r)),
                                         sum(len(x.finished) for _, x in results) == 3 and done.set()), speedup=2.0)
    worker.start()
    started = time.monotonic()
    for i, output in enumerate((10, 20, 30)):
        worker.submit(Request(i, "default", 0.0, 50, output))
    assert done.wait(timeout=10)
    worker.stop()
    tokens = [t for _, r in results for t in r.tokens]
    assert {i: tokens.count(i) for i in range(3)} == {0: 10, 1: 20, 2: 30}
    modelled = results[-1][1].end_s                      # engine seconds: 30 steps of 10 ms, plus any lag
    assert 0.30 - 1e-9 <= modelled < 2.0
    wall = results[-1][0] - started
    assert wall >= 0.30 / 2.0 * 0.95                     # never faster than the model allows


def test_worker_as_a_ray_actor_streams_steps_to_the_driver(local_ray):
    from ray.util.queue import Queue

    outbox = Queue()
    actor = ray.remote(num_cpus=0)(WorkerActor).remote(engine(), outbox, 4.0)
    ray.get([actor.submit.remote(Request(i, "default", 0.0, 20, 15)) for i in range(4)])
    finished, steps = set(), 0
    while len(finished) < 4:
        result = outbox.get(timeout=10)
        finished |= set(result.finished)
        steps += 1
    assert finished == {0, 1, 2, 3} and steps >= 15
    assert ray.get(actor.stats.remote())["running"] == 0
    ray.get(actor.stop.remote())
