"""The worker as a Ray actor. The driver long-polls its reports (one message per step
or more), sends it commands, and has it pull a request's KV from another worker:
reserve blocks, fetch the bytes (through the object store, or torch.distributed when
the workers joined a group), check them, wait out the modelled transfer time, and on
the last stage admit the request to decode here."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cluster.core.request import Request
from cluster.engines.port import Engine, KVNotReady
from cluster.live.worker import Report, Worker
from migration.transport import ChecksumError, InboxWriter, SharedMemoryInbox, TorchTransport, verify

EXPORT_WAIT_S = 30.0


@dataclass(frozen=True)
class LinkTime:
    """The modelled time of one transfer stage, `fixed_s + tokens * seconds_per_token`,
    that an emulated transfer waits out (zero for real engines: their KV takes what it takes)."""
    fixed_s: float
    seconds_per_token: float


def _urgent(report: Report) -> bool:
    step = report.step
    return bool(report.notes or step is None or step.prefilled or step.finished or step.preempted or step.stored)


@dataclass(frozen=True)
class Pulled:
    ok: bool
    reason: str = ""
    tokens: int = 0
    nbytes: int = 0
    real_s: float = 0.0
    done_s: float = 0.0
    """When the KV was in (this worker's monotonic clock), its admission queued."""


def _unniced() -> int:
    """Lower this thread's niceness to 0 where the process may (Ray starts workers at
    15, and threads started from here inherit it); the niceness it runs at."""
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    return os.getpriority(os.PRIO_PROCESS, 0)


class WorkerActor:
    """Use as `ray.remote(WorkerActor)` with `max_concurrency` > 1: `poll` blocks while
    commands and pulls come in. The engine is made in the actor (`make_engine`), so a
    real model loads where it runs."""

    def __init__(self, index: int, make_engine: Callable[[], Engine], speedup: float, inbox: str = "",
                 inbox_bytes: int = 0) -> None:
        self.index, self.speedup = index, speedup
        self.nice = _unniced()
        engine = make_engine()
        self.inbox = SharedMemoryInbox(inbox, inbox_bytes) if inbox else None
        self.writer = InboxWriter()
        self.outbox: list[Report] = []
        self.posted = threading.Condition()
        self.worker = Worker(engine, self._post, speedup)
        self.engine = engine
        self.corrupt: set[int] = set()
        self.group: TorchTransport | None = None
        self.worker.start()

    def _post(self, report: Report) -> None:
        with self.posted:
            self.outbox.append(report)
            self.posted.notify_all()

    def ready(self) -> int:
        return self.index

    def niceness(self) -> int:
        """The niceness the engine's thread runs at."""
        return self.nice

    def address(self) -> str:
        """A free TCP address on this worker's node, for a process group's rendezvous."""
        import socket

        import ray

        with socket.socket() as probe:
            probe.bind(("", 0))
            return f"tcp://{ray.util.get_node_ip_address()}:{probe.getsockname()[1]}"

    def join_group(self, init_method: str, rank: int, world_size: int, backend: str, timeout_s: float) -> int:
        self.group = TorchTransport(rank, world_size, init_method, backend, timeout_s)
        return rank

    def clock(self) -> tuple[str, float]:
        import ray

        return ray.get_runtime_context().get_node_id(), time.monotonic()

    def poll(self, timeout_s: float, batch_s: float = 0.0) -> list[Report]:
        """The reports since the last poll, once there is one; with `batch_s`, reports
        of plain decode steps wait up to that long for company (fewer calls: on a
        small machine a call per step costs as much CPU as a small model's step),
        while a prefill done, a finish or a note goes at once."""
        with self.posted:
            self.posted.wait_for(lambda: self.outbox, timeout_s)
            if self.outbox and batch_s > 0:
                until = self.outbox[0].sent_s + batch_s
                self.posted.wait_for(lambda: any(map(_urgent, self.outbox)), max(0.0, until - time.monotonic()))
            reports, self.outbox = self.outbox, []
        return reports

    def submit(self, request: Request) -> None:
        self.worker.submit(request)

    def abort(self, request_id: int) -> None:
        self.worker.at_boundary(lambda: self.engine.abort(request_id))

    def decode_here(self, request_id: int) -> None:
        """A request prefilled here decodes here too (a handoff to its own instance)."""
        def admit() -> None:
            request = self.engine.requests[request_id]
            self.engine.admit(request, request.blocks)
        self.worker.at_boundary(admit)

    def release(self, request_id: int) -> None:
        with self.worker.held():
            self.engine.release(request_id)
        self.worker.wake.set()

    def preempt(self, request_id: int, mode: str) -> None:
        def preempt() -> None:
            nbytes = self.engine.preempt(request_id, mode, self.worker.now())
            self.worker.note("preempted", request_id, -1.0 if nbytes is None else nbytes)
        self.worker.at_boundary(preempt)

    def resume(self, request_id: int) -> None:
        self.worker.at_boundary(lambda: self.worker.note("resumed", request_id, float(self.engine.resume(request_id))))

    def detach(self, request_id: int, keep_kv: bool = True) -> None:
        def detach() -> None:
            request = self.engine.detach(request_id, keep_kv)
            self.worker.note("detached", request_id, -1.0 if request is None else float(request.context))
        self.worker.at_boundary(detach)

    def reattach(self, request_id: int) -> None:
        self.worker.at_boundary(lambda: self.engine.reattach(request_id))

    def prefer_victim(self, request_id: int | None) -> None:
        """The router's choice of whom the engine preempts first when its KV runs out."""
        with self.worker.held():
            self.engine.prefer_victim(request_id)

    def cancel(self, request_id: int, ticket: int = 0) -> None:
        """Free the blocks reserved (under `ticket`) for a request's KV that will not come."""
        self.worker.cancel(request_id, ticket)

    def corrupt_next_export(self, request_id: int) -> None:
        """A fault to inject: the next KV this worker exports for the request arrives
        with a byte flipped, so the receiver's check fails."""
        self.corrupt.add(request_id)

    def export_kv(self, request_id: int, first: int, tokens: int | None, final: bool, peer: int | None = None,
                  inbox: tuple[str, int, int] | None = None):
        """KV of tokens [first, first + tokens) (to the end when `tokens` is None), once
        computed, with the request's state when `final` (the receiver takes it over). The bytes come
        back in the result, or go to rank `peer` of the workers' group, or into the
        shared-memory `inbox` (name, size, transfer) of a worker on this node when they fit."""
        deadline = time.monotonic() + EXPORT_WAIT_S
        while True:
            with self.worker.held(change=False):
                request, context = self.engine.requests[request_id], self.engine.context_of(request_id)
                if tokens is None:
                    tokens = context - first
                moved = dataclasses.replace(request, pieces=[], output=list(request.output)) \
                    if final else None
                try:
                    if first + tokens > context:
                        raise KVNotReady(f"request {request_id}: KV up to token {first + tokens} asked, {context} "
                                         "computed (the last token's KV comes with the next step)")
                    packet, data = self.engine.export_kv(request_id, first, tokens)
                    if request_id in self.corrupt:
                        self.corrupt.discard(request_id)
                        data = data.copy()
                        data.view(np.uint8).reshape(-1)[0] ^= 0xFF
                    break
                except KVNotReady:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.001)
        if peer is not None:
            self.group.send(packet, data, peer)
            data = None
        elif inbox is not None and data.nbytes <= inbox[1]:
            self.writer.write(inbox[0], inbox[2], data)
            data = None
        return packet, data, moved, first, tokens

    def pull(self, request_id: int, exported: list, reserve: int, final: bool, link: LinkTime,
             timeout_s: float, peer: int | None = None, ticket: int = 0) -> Pulled:
        """Take in KV that the source exports (`exported`: [the ref of its `export_kv`]);
        from rank `peer` of the workers' group when it sends there; through this worker's
        shared-memory inbox when `exported` is [source actor, first, tokens] instead. KV not
        in (its modelled time waited out) by `timeout_s` is refused, so that the driver,
        which waits a little longer, never gives up a request that then decodes here.
        `ticket` names the driver's reservation the blocks are held under."""
        import ray

        start = time.monotonic()
        if reserve and not self.worker.reserve(request_id, reserve, start + timeout_s, ticket):
            if peer is not None:
                self.group.receive(None, peer, request_id)
            return Pulled(False, "target_full")
        try:
            if len(exported) == 3:
                nbytes, request, tokens = self._through_inbox(request_id, exported, final, timeout_s)
            else:
                received = self.group.receive(None, peer, request_id) if peer is not None else None
                packet, data, request, first, tokens = ray.get(exported[0], timeout=timeout_s)
                data = data if received is None else received
                self._take(packet, data, first)
                nbytes = data.nbytes
        except ray.exceptions.GetTimeoutError:
            return self._failed(request_id, "timeout", ticket)
        except ray.exceptions.RayActorError:
            return self._failed(request_id, "source_dead", ticket)
        except KeyError:
            return self._failed(request_id, "missing", ticket)
        except ChecksumError:
            return self._failed(request_id, "checksum", ticket)
        except RuntimeError:
            return self._failed(request_id, "transport", ticket)
        real_s = time.monotonic() - start
        done = start + (link.fixed_s + tokens * link.seconds_per_token) / self.speedup
        time.sleep(max(0.0, min(done, start + timeout_s) - time.monotonic()))
        if time.monotonic() > start + timeout_s:
            return self._failed(request_id, "timeout", ticket)
        if final:
            blocks = self.worker.take_reservation(request_id, ticket)
            if blocks is None:
                return Pulled(False, "cancelled")
            self.worker.at_boundary(lambda: self.engine.admit(request, blocks))
        return Pulled(True, "", tokens, int(nbytes), real_s, time.monotonic())

    def _through_inbox(self, request_id: int, exported: list, final: bool, timeout_s: float):
        import ray

        source, first, tokens = exported
        with self.inbox.lock:
            ref = source.export_kv.remote(request_id, first, tokens, final, None,
                                          (self.inbox.name, self.inbox.nbytes, self.inbox.open()))
            deadline = time.monotonic() + timeout_s
            streamed = self.inbox.follow(lambda: bool(ray.wait([ref], timeout=0)[0]) or time.monotonic() > deadline)
            packet, data, request, first, tokens = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            if data is None:
                data = self.inbox.view(packet.nbytes)
            self._take(packet, data, first, streamed)
        return packet.nbytes, request, tokens

    def _take(self, packet, data, first: int, streamed: int | None = None) -> None:
        """Check arrived KV and hand it to the engine (which copies what it keeps)."""
        verify(packet, data, streamed)
        with self.worker.held():
            self.engine.import_kv(packet.request, first, data)

    def _failed(self, request_id: int, reason: str, ticket: int) -> Pulled:
        self.worker.cancel(request_id, ticket)
        return Pulled(False, reason)

    def stats(self) -> dict:
        with self.worker.held(change=False):
            return self.engine.stats()

    def stop(self) -> None:
        self.worker.stop()
        if self.inbox is not None:
            self.inbox.close()
            self.inbox = None
