"""How KV bytes travel between workers, behind one interface: the Ray object store,
or torch.distributed point to point (gloo on CPU, NCCL on GPU: the same code with
another backend and device). Every payload carries a checksum (XXH3, 63 bits: fast
enough not to dominate a transfer) that the receiver checks.

A transfer is two calls made at once on the two workers: `send` on the source and
`receive` on the target. The target checks the bytes against the `Packet` the source
described (given to `receive`, or for torch.distributed sent ahead of the bytes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import xxhash

CHECKSUM_MASK = 2 ** 63 - 1
INBOX_HEADER = 64


class ChecksumError(RuntimeError):
    """A KV payload arrived different from what was sent."""


@dataclass(frozen=True)
class Packet:
    request: int
    nbytes: int
    checksum: int
    ref: object = None


def checksum(data: np.ndarray) -> int:
    return xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(data)).cast("B")) & CHECKSUM_MASK


def describe(request: int, data: np.ndarray) -> Packet:
    return Packet(request, int(data.nbytes), checksum(data))


def verify(packet: Packet, data: np.ndarray, streamed: int | None = None) -> np.ndarray:
    """`data`, when it is what `packet` describes. `streamed`: its checksum taken as it
    arrived; when that differs, the bytes are hashed again whole before they count as bad."""
    if data.nbytes == packet.nbytes and streamed == packet.checksum:
        return data
    if data.nbytes != packet.nbytes or checksum(data) != packet.checksum:
        raise ChecksumError(f"KV of request {packet.request}: {data.nbytes} bytes arrived with checksum "
                            f"{checksum(data):#010x}, expected {packet.nbytes} bytes with {packet.checksum:#010x}")
    return data


class ObjectStoreTransport:
    """The source puts the payload in Ray's object store; the target gets it."""
    name = "object_store"

    def send(self, packet: Packet, data: np.ndarray, peer: int) -> Packet:
        import ray

        return Packet(packet.request, packet.nbytes, packet.checksum, ray.put(data))

    def receive(self, packet: Packet, peer: int) -> np.ndarray:
        import ray

        return verify(packet, np.asarray(ray.get(packet.ref)))


class TorchTransport:
    """Point-to-point send/recv in a torch.distributed group of the workers: a header
    (request, size, checksum) then the bytes, tagged by request so that transfers
    between the same two workers may overlap."""

    def __init__(self, rank: int, world_size: int, init_method: str, backend: str = "gloo",
                 timeout_s: float = 60.0) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        if backend not in ("gloo", "nccl"):
            raise ValueError(f"transport backend: expected 'gloo' or 'nccl', got {backend!r}")
        self.name, self.torch, self.dist = backend, torch, dist
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))

    @staticmethod
    def _tag(request: int) -> int:
        return request % (2 ** 31 - 1)

    def send(self, packet: Packet, data: np.ndarray, peer: int) -> Packet:
        header = self.torch.tensor([packet.request, packet.nbytes, packet.checksum], dtype=self.torch.int64)
        self.dist.send(header.to(self.device), dst=peer, tag=self._tag(packet.request))
        tensor = self.torch.from_numpy(np.ascontiguousarray(data).view(np.uint8).reshape(-1)).to(self.device)
        self.dist.send(tensor, dst=peer, tag=self._tag(packet.request))
        return packet

    def receive(self, packet: Packet | None, peer: int, request: int | None = None) -> np.ndarray:
        """The bytes of `request` (default `packet.request`) from `peer`, checked against
        `packet` when given, else against the header the sender sent ahead."""
        tag = self._tag(packet.request if request is None else request)
        header = self.torch.empty(3, dtype=self.torch.int64, device=self.device)
        self.dist.recv(header, src=peer, tag=tag)
        sent = Packet(*(int(x) for x in header.cpu().tolist()))
        buffer = self.torch.empty(sent.nbytes, dtype=self.torch.uint8, device=self.device)
        self.dist.recv(buffer, src=peer, tag=tag)
        return verify(packet or sent, buffer.cpu().numpy())

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class SharedMemoryInbox:
    """A worker's inbox in shared memory, its pages touched once at creation, so that a
    source on the same node writes KV straight into warm memory (one copy). The source
    writes in chunks and counts them in the inbox's header (transfer, total bytes, bytes
    written), so the worker checks each chunk while the next is copied (`follow`).
    One transfer at a time holds it (`lock`)."""

    def __init__(self, name: str, nbytes: int) -> None:
        import itertools
        import threading
        from multiprocessing.shared_memory import SharedMemory

        self.name, self.nbytes = name, nbytes
        self.memory = SharedMemory(name=name, create=True, size=INBOX_HEADER + nbytes)
        np.ndarray((INBOX_HEADER + nbytes,), dtype=np.uint8, buffer=self.memory.buf).fill(0)
        self.header = _header(self.memory)
        self.transfers = itertools.count(1)
        self.lock = threading.Lock()

    def view(self, nbytes: int) -> np.ndarray:
        return _payload(self.memory, nbytes)

    def open(self) -> int:
        """A new transfer's id, for the source to write under."""
        transfer = next(self.transfers)
        self.header[1:] = (-1, 0)
        self.header[0] = transfer
        return transfer

    def follow(self, source_done: Callable[[], bool], poll_s: float = 50e-6, ask_s: float = 1e-3) -> int | None:
        """The checksum of the payload, hashed chunk by chunk as the source writes it;
        None when the source is done without writing it all here (asked after `ask_s`
        without progress: asking costs more than a poll)."""
        hasher, checked, progressed = xxhash.xxh3_64(), 0, time.monotonic()
        while True:
            total, written = int(self.header[1]), int(self.header[2])
            if written > checked:
                hasher.update(memoryview(self.view(written)[checked:]))
                checked, progressed = written, time.monotonic()
            elif total >= 0 and checked == total:
                return hasher.intdigest() & CHECKSUM_MASK
            elif time.monotonic() - progressed > ask_s and source_done():
                return None
            else:
                time.sleep(poll_s)

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()


class InboxWriter:
    """Writes payloads into other workers' inboxes on this node, keeping each mapped."""

    def __init__(self, chunk_bytes: int = 1 << 20) -> None:
        self.mapped: dict = {}
        self.chunk_bytes = chunk_bytes

    def write(self, name: str, transfer: int, data: np.ndarray) -> None:
        from multiprocessing import resource_tracker
        from multiprocessing.shared_memory import SharedMemory

        memory = self.mapped.get(name)
        if memory is None:
            memory = self.mapped[name] = SharedMemory(name=name)
            resource_tracker.unregister(memory._name, "shared_memory")
        header, source = _header(memory), data.view(np.uint8).reshape(-1)
        if header[0] != transfer:
            raise RuntimeError(f"inbox {name}: transfer {transfer} is no longer awaited (now {int(header[0])})")
        target = _payload(memory, source.nbytes)
        header[1] = source.nbytes
        for start in range(0, source.nbytes, self.chunk_bytes):
            end = min(start + self.chunk_bytes, source.nbytes)
            target[start:end] = source[start:end]
            header[2] = end


def _header(memory) -> np.ndarray:
    return np.ndarray((3,), dtype=np.int64, buffer=memory.buf)


def _payload(memory, nbytes: int) -> np.ndarray:
    return np.ndarray((nbytes,), dtype=np.uint8, buffer=memory.buf, offset=INBOX_HEADER)
