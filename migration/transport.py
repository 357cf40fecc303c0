"""How KV bytes travel between workers, behind one interface: the Ray object store,
or torch.distributed point to point (gloo on CPU, NCCL on GPU: the same code with
another backend and device). Every payload carries a checksum (XXH3, 63 bits: fast
enough not to dominate a transfer) that the receiver checks.

A transfer is two calls made at once on the two workers: `send` on the source and
`receive` on the target. The target checks the bytes against the `Packet` the source
described (given to `receive`, or for torch.distributed sent ahead of the bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

TRANSPORTS = ("object_store", "gloo", "nccl")


class ChecksumError(RuntimeError):
    """A KV payload arrived different from what was sent."""


@dataclass(frozen=True)
class Packet:
    request: int
    nbytes: int
    checksum: int
    ref: object = None


def checksum(data: np.ndarray) -> int:
    return xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(data)).cast("B")) & (2 ** 63 - 1)


def describe(request: int, data: np.ndarray) -> Packet:
    return Packet(request, int(data.nbytes), checksum(data))


def verify(packet: Packet, data: np.ndarray) -> np.ndarray:
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
    source on the same node writes KV straight into warm memory (one copy) and the
    worker checks it in place. One transfer at a time holds it (`lock`)."""

    def __init__(self, name: str, nbytes: int) -> None:
        import threading
        from multiprocessing.shared_memory import SharedMemory

        self.name, self.nbytes = name, nbytes
        self.memory = SharedMemory(name=name, create=True, size=nbytes)
        self.view(nbytes).fill(0)
        self.lock = threading.Lock()

    def view(self, nbytes: int) -> np.ndarray:
        return np.ndarray((nbytes,), dtype=np.uint8, buffer=self.memory.buf)

    def close(self) -> None:
        self.memory.close()
        self.memory.unlink()


class InboxWriter:
    """Writes payloads into other workers' inboxes on this node, keeping each mapped."""

    def __init__(self) -> None:
        self.mapped: dict = {}

    def write(self, name: str, data: np.ndarray) -> None:
        from multiprocessing import resource_tracker
        from multiprocessing.shared_memory import SharedMemory

        memory = self.mapped.get(name)
        if memory is None:
            memory = self.mapped[name] = SharedMemory(name=name)
            resource_tracker.unregister(memory._name, "shared_memory")
        np.ndarray((data.nbytes,), dtype=np.uint8, buffer=memory.buf)[:] = data.view(np.uint8).reshape(-1)
