"""Starting the live cluster on Ray: connect to the cluster at an address (or start
Ray in-process), give each instance a placement group on its node, start one worker
actor per instance. A wrong address, too few resources or a worker that fails to
start is a `ClusterError` within seconds, never a hang."""
from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass

from cluster.core.scheduling import InstanceSpec
from cluster.engines.backends import EngineSpec
from cluster.live.actor import WorkerActor
from cluster.live.reaper import watch_this_process

MAX_CONCURRENCY = 16
LOCAL_RAY = {"worker_niceness": 0}


class ClusterError(RuntimeError):
    """The Ray cluster cannot host the configured instances."""


@dataclass(frozen=True)
class WorkerOptions:
    speedup: float = 1.0
    kv_scale: float = 0.01
    worker_cpus: float = 0.25
    start_timeout_s: float = 30.0
    transport: str = "object_store"
    inbox_mib: int = 128
    engine: str = "emulated"
    model_path: str = ""
    seed: int = 0
    worker_gpus: float = 0.0


def connect(address: str | None, timeout_s: float = 5.0, field: str = "ray.address") -> None:
    """Join the Ray cluster at `address` ("host:port" or "auto"); None starts one in-process.
    Errors name `field`, where the address came from."""
    import ray

    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if address and address != "auto" and address != joined:
            raise ClusterError(f"{field}: this process is already connected to the Ray cluster at {joined}, "
                               f"not {address}")
        return
    if not address:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                 _system_config=LOCAL_RAY)
        watch_this_process()
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"{field}: expected HOST:PORT of a Ray head (e.g. 10.0.0.1:6379) or 'auto', "
                               f"got {address!r}")
        try:
            speaks_grpc = _speaks_grpc(host, int(port), timeout_s)
        except OSError as exc:
            raise ClusterError(f"{field}: no Ray cluster answers at {address} ({exc}); start one with "
                               f"`ray start --head` there, or leave {field} unset to run on this machine") from None
        if not speaks_grpc:
            raise ClusterError(f"{field}: {address} answers but is not a Ray head (no gRPC reply); "
                               f"give the head's GCS port (6379 by default)")
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ClusterError(f"{field}: cannot join the Ray cluster at {address}: {exc}") from None


def _speaks_grpc(host: str, port: int, timeout_s: float) -> bool:
    """Whether the server at host:port answers a Ray GCS call within `timeout_s`: any
    gRPC reply, an authentication refusal included, is a Ray head; silence, or a
    server that speaks HTTP/2 but answers no call, is not (`ray.init` would retry it
    without end). An unreachable port raises OSError."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    socket.create_connection((host, port), timeout=timeout_s).close()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    return True


def ray_nodes() -> list[str]:
    """Ids of the cluster's live nodes, the head first."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    nodes.sort(key=lambda n: (not n["Resources"].get("node:__internal_head__"), n["NodeID"]))
    return [n["NodeID"] for n in nodes]


def start_workers(instances: list[InstanceSpec], nodes: list[int], options: WorkerOptions) -> tuple[list, list]:
    """One placement group and one worker actor per instance; the instances' logical
    nodes map onto the cluster's nodes in order. Returns (actors, placement groups)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cluster_nodes = ray_nodes()
    bundle = {"CPU": options.worker_cpus} | ({"GPU": options.worker_gpus} if options.worker_gpus else {})
    _check_fits(bundle, len(nodes))
    groups = []
    for node in nodes:
        selector = [{"ray.io/node-id": cluster_nodes[node % len(cluster_nodes)]}] if len(cluster_nodes) > 1 else None
        groups.append(placement_group([bundle], strategy="STRICT_PACK", bundle_label_selector=selector))
    try:
        ray.get([g.ready() for g in groups], timeout=options.start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        for g in groups:
            remove_placement_group(g)
        free = {k: v for k, v in ray.available_resources().items() if "_group_" not in k and ":" not in k}
        raise ClusterError(f"ray: {len(groups)} placement groups of {bundle} each did not fit within "
                           f"{options.start_timeout_s:g} s; the cluster has {({'CPU': 0.0} | free)} free "
                           f"(set ray.worker_cpus lower or add nodes)") from None
    remote = ray.remote(WorkerActor)
    actors, run = [], uuid.uuid4().hex[:8]
    inbox = options.inbox_mib << 20 if options.transport == "shm" else 0
    for instance, group in zip(instances, groups):
        engine = EngineSpec(options.engine, instance, options.kv_scale, options.model_path, options.seed)
        actors.append(remote.options(num_cpus=options.worker_cpus, num_gpus=options.worker_gpus,
                                     max_concurrency=MAX_CONCURRENCY,
                                     scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0))
                      .remote(instance.id, engine, options.speedup, f"pdlab-{run}-{instance.id}" if inbox else "",
                              inbox))
    try:
        ray.get([a.ready.remote() for a in actors], timeout=options.start_timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
        stop(actors, groups)
        raise ClusterError(f"ray: the worker actors did not start within {options.start_timeout_s:g} s: "
                           f"{type(exc).__name__}: {_cause(exc)}") from None
    _warn_if_niced(ray.get([a.niceness.remote() for a in actors]))
    if options.transport in ("gloo", "nccl"):
        _join_group(actors, groups, options)
    return actors, groups


def _warn_if_niced(niceness: list[int]) -> None:
    """Ray starts workers at niceness 15; an emulated engine that wakes late under load
    starts its step late (TBT p99 off by half on two cores). A worker lowers its own
    niceness where it may; where it may not, say so."""
    if max(niceness) > 0:
        logging.getLogger("pdlab").warning(
            "ray: worker actors run at niceness %d (Ray's default); their steps start late when the node is "
            "busy. Start Ray with RAY_worker_niceness=0 (`RAY_worker_niceness=0 ray start ...`)", max(niceness))


HINTS = {"CPU": "set ray.worker_cpus lower or add nodes", "GPU": "set ray.worker_gpus lower or add GPU nodes"}


def _check_fits(bundle: dict[str, float], count: int) -> None:
    """Refuse at once workers the cluster can never hold: more of a resource in all than
    it has, or more for one worker than any node has."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for resource, amount in bundle.items():
        total = sum(n.get(resource, 0.0) for n in nodes)
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        if amount * count > total or amount > largest:
            raise ClusterError(f"ray: {count} workers of {amount:g} {resource} each need {amount * count:g} "
                               f"{resource}; the cluster has {total:g} in all, at most {largest:g} on one node "
                               f"({HINTS[resource]})")


def _cause(exc: Exception) -> str:
    """The error an actor's start failed with (the last `SomeError: message` line of
    Ray's report), else the report's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception"))]
    return raised[-1] if raised else (lines[0] if lines else "")


def _join_group(actors: list, groups: list, options: WorkerOptions) -> None:
    """The workers form one torch.distributed group (rank = instance id) for KV transfers."""
    import ray

    try:
        address = ray.get(actors[0].address.remote(), timeout=options.start_timeout_s)
        ray.get([a.join_group.remote(address, rank, len(actors), options.transport, options.start_timeout_s)
                 for rank, a in enumerate(actors)], timeout=options.start_timeout_s * 2)
    except Exception as exc:  # noqa: BLE001 (any failure to form the group is the same error to the user)
        stop(actors, groups)
        raise ClusterError(f"ray.transport: the workers could not form a {options.transport} group: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def stop(actors: list, groups: list) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    stopping = [actor.stop.remote() for actor in actors]
    ray.wait(stopping, num_returns=len(stopping), timeout=5)
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 (gone already)
            pass
    for group in groups:
        remove_placement_group(group)
