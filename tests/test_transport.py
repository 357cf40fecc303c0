"""KV transports between real Ray actors: the object store and torch.distributed gloo,
with the checksum verified on arrival."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migration.transport import ChecksumError, ObjectStoreTransport, Packet, TorchTransport, describe


@ray.remote(num_cpus=0, max_concurrency=2)
class Worker:
    def __init__(self, kind: str, rank: int = 0, world: int = 1, address: str = "") -> None:
        self.transport = ObjectStoreTransport() if kind == "object_store" else TorchTransport(rank, world, address)
        self.kv: dict[int, np.ndarray] = {}

    def hold(self, request: int, nbytes: int, seed: int) -> Packet:
        self.kv[request] = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
        return describe(request, self.kv[request])

    def send(self, packet: Packet, peer: int) -> Packet:
        return self.transport.send(packet, self.kv[packet.request], peer)

    def receive(self, packet: Packet, peer: int) -> int:
        self.kv[packet.request] = self.transport.receive(packet, peer)
        return int(self.kv[packet.request].nbytes)

    def digest(self, request: int) -> bytes:
        return self.kv[request].tobytes()[:64] + self.kv[request].tobytes()[-64:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_object_store_moves_kv_and_checks_it(local_ray):
    source, target = Worker.remote("object_store"), Worker.remote("object_store")
    packet = ray.get(source.hold.remote(7, 4 << 20, seed=1))
    shipped = ray.get(source.send.remote(packet, 1))
    assert ray.get(target.receive.remote(shipped, 0)) == 4 << 20
    assert ray.get(target.digest.remote(7)) == ray.get(source.digest.remote(7))
    forged = Packet(7, shipped.nbytes, shipped.checksum ^ 1, shipped.ref)
    with pytest.raises(ChecksumError, match="KV of request 7"):
        ray.get(target.receive.remote(forged, 0))


def test_gloo_moves_kv_point_to_point(local_ray):
    address = f"tcp://127.0.0.1:{free_port()}"
    source, target = Worker.remote("gloo", 0, 2, address), Worker.remote("gloo", 1, 2, address)
    packet = ray.get(source.hold.remote(3, 2 << 20, seed=2))
    sent, received = source.send.remote(packet, 1), target.receive.remote(packet, 0)
    assert ray.get(received) == 2 << 20 and ray.get(sent) == packet
    assert ray.get(target.digest.remote(3)) == ray.get(source.digest.remote(3))
    wrong = Packet(3, packet.nbytes, packet.checksum ^ 1)
    sent, received = source.send.remote(packet, 1), target.receive.remote(wrong, 0)
    ray.get(sent)
    with pytest.raises(ChecksumError):
        ray.get(received)


@pytest.fixture
def inbox():
    """An inbox and a writer in this process (a worker's and its source's, on two threads)."""
    from multiprocessing import resource_tracker

    from migration.transport import InboxWriter, SharedMemoryInbox

    box = SharedMemoryInbox(f"pdlab-test-{np.random.default_rng().integers(1 << 30)}", 1 << 20)
    writer = InboxWriter()
    yield box, writer
    if writer.mapped:
        resource_tracker.register(box.memory._name, "shared_memory")
    box.close()


def write_beside(inbox, transfer: int, data: np.ndarray, chunk: int):
    """The source's side on another thread, as a worker's call would run it."""
    import threading

    box, writer = inbox
    writer.chunk_bytes = chunk
    failed: list[Exception] = []

    def write() -> None:
        try:
            writer.write(box.name, transfer, data)
        except Exception as error:
            failed.append(error)
    thread = threading.Thread(target=write)
    thread.start()
    return thread, failed


@given(nbytes=st.integers(1, 1 << 20), chunk=st.sampled_from([1, 4096, 65536, 1 << 20]), seed=st.integers(0, 99))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_inbox_checks_chunks_as_they_land(inbox, nbytes, chunk, seed):
    from migration.transport import checksum, verify

    box = inbox[0]
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    thread, failed = write_beside(inbox, box.open(), data, max(chunk, nbytes // 64))
    streamed = box.follow(lambda: not thread.is_alive())
    thread.join()
    assert not failed and streamed == checksum(data)
    assert np.array_equal(verify(describe(0, data), box.view(nbytes), streamed), data)


def test_inbox_refuses_a_stale_transfer_and_catches_corruption(inbox):
    from migration.transport import verify

    box = inbox[0]
    data = np.arange(4096, dtype=np.uint8)
    stale, current = box.open(), box.open()
    thread, failed = write_beside(inbox, stale, data, 1024)
    assert box.follow(lambda: not thread.is_alive()) is None
    assert "no longer awaited" in str(failed[0])
    thread, failed = write_beside(inbox, current, data, 1024)
    streamed = box.follow(lambda: not thread.is_alive())
    thread.join()
    sent = data.copy()
    sent[100] ^= 1
    with pytest.raises(ChecksumError, match="KV of request 5"):
        verify(describe(5, sent), box.view(4096), streamed)
    box.view(4096)[100] ^= 1
    assert verify(describe(5, sent), box.view(4096), streamed) is not None
