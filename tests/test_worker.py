"""A worker steps its engine in real time and reports every step; as a Ray actor too."""
from __future__ import annotations

import threading
import time
from functools import partial

import ray

from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec, SchedulerConfig
from cluster.engines.model import ModelEngine
from cluster.engines.port import StepResult
from cluster.hardware.perfmodel import IterationModel
from cluster.live.actor import WorkerActor
from cluster.live.worker import Report, Worker
from router.snapshot import COLOCATED

FLAT = IterationModel(prefill=(0.01, 0.0, 0.0), decode=(0.01, 0.0, 0.0))
engine = partial(ModelEngine, InstanceSpec(0, COLOCATED, FLAT, SchedulerConfig(), 1000, 1.0, 1e9))
"""Every step takes 10 ms, whatever the batch."""


def test_worker_waits_out_each_step_and_reports_every_token():
    results: list[tuple[float, StepResult]] = []
    done = threading.Event()
    worker = Worker(engine(), lambda r: r.step and (results.append((time.monotonic(), r.step)),
                                                    sum(len(x.finished) for _, x in results) == 3 and done.set()),
                    speedup=2.0)
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


def test_worker_as_a_ray_actor_reports_steps_to_a_long_poll(local_ray):
    actor = ray.remote(num_cpus=0, max_concurrency=4)(WorkerActor).remote(0, engine, 4.0)
    ray.get([actor.submit.remote(Request(i, "default", 0.0, 20, 15)) for i in range(4)])
    finished, steps = set(), 0
    while len(finished) < 4:
        for report in ray.get(actor.poll.remote(5.0)):
            if report.step is not None:
                finished |= set(report.step.finished)
                steps += 1
    assert finished == {0, 1, 2, 3} and steps >= 15
    assert ray.get(actor.stats.remote())["running"] == 0
    assert ray.get(actor.poll.remote(0.05)) == []
    ray.get(actor.stop.remote())


def test_reserved_blocks_expire_unless_committed():
    reports: list[Report] = []
    worker = Worker(engine(), reports.append)
    worker.start()
    assert worker.reserve(7, 100, time.monotonic() + 0.1)
    assert worker.reserve(8, 50, time.monotonic() + 60)
    assert worker.engine.stats()["free_blocks"] == 850
    deadline = time.monotonic() + 5
    while not any(n[0] == "reservation_expired" for r in reports for n in r.notes) and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.cancel(8)
    time.sleep(0.1)
    worker.stop()
    assert ("reservation_expired", 7, 100) in [n for r in reports for n in r.notes]
    assert worker.engine.stats()["free_blocks"] == 1000 and worker.take_reservation(8) is None


def test_kv_is_exported_only_once_computed():
    """A decoding request's last token gets its KV in the next step: a stage asking for
    it waits for that step instead of shipping KV not written yet."""
    actor = WorkerActor(0, engine, 1.0)
    actor.submit(Request(0, "default", 0.0, 20, 200))
    while 0 not in actor.engine.instance.running:
        time.sleep(0.001)
    for _ in range(20):
        with actor.worker.held():
            asked = actor.engine.context_of(0) + 1
        _, _, _, first, tokens = actor.export_kv(0, 0, asked, False)
        assert (first, tokens) == (0, asked)
        with actor.worker.held():
            assert actor.engine.context_of(0) >= asked
    actor.stop()


def test_a_late_cancel_of_an_earlier_reservation_leaves_the_new_one():
    worker = Worker(engine(), lambda report: None)
    assert worker.reserve(7, 100, time.monotonic() + 60, ticket=1)
    assert worker.reserve(7, 40, time.monotonic() + 60, ticket=2)
    assert worker.engine.stats()["free_blocks"] == 960
    worker.cancel(7, ticket=1)
    assert worker.take_reservation(7, ticket=1) is None
    assert worker.take_reservation(7, ticket=2) == 40
