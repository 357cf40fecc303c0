"""Where instances sit and how KV travels between them: instances packed onto nodes
by their GPUs, NVLink within a node and the network between nodes, each direction
of each link a shared resource."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.hardware.specs import HardwareSpec
from migration.cost import Link
from migration.links import LinkPool


@dataclass(frozen=True)
class Placement:
    role: int
    tp: int
    node: int


def place(groups: list[tuple[int, int, int | None]], gpus_per_node: int) -> list[Placement]:
    """`groups`: (role, tp, node or None) per instance; unplaced ones fill nodes in order."""
    used: dict[int, int] = {}
    placements, node = [], 0
    for role, tp, fixed in groups:
        if tp > gpus_per_node:
            raise ValueError(f"cluster: an instance with tp {tp} does not fit a node of {gpus_per_node} GPUs")
        if fixed is None:
            while used.get(node, 0) + tp > gpus_per_node:
                node += 1
            target = node
        else:
            target = fixed
            if used.get(target, 0) + tp > gpus_per_node:
                raise ValueError(f"cluster: node {target} has no room for another {tp} GPUs")
        used[target] = used.get(target, 0) + tp
        placements.append(Placement(role, tp, target))
    return placements


@dataclass(frozen=True)
class Paths:
    """The links a KV copy from one instance to another crosses."""
    placements: tuple[Placement, ...]

    def __call__(self, source: int, target: int) -> tuple[str, ...]:
        a, b = self.placements[source], self.placements[target]
        if a.node == b.node:
            return f"nvlink-out:{source}", f"nvlink-in:{target}"
        return f"net-out:{a.node}", f"net-in:{b.node}"


def link_pool(placements: list[Placement], hardware: HardwareSpec) -> tuple[LinkPool, Paths]:
    nvlink, network = hardware.link("nvlink"), hardware.link("network")
    links: dict[str, Link] = {}
    for i, p in enumerate(placements):
        for side in ("out", "in"):
            links[f"nvlink-{side}:{i}"] = Link(f"nvlink-{side}:{i}", nvlink.bandwidth * p.tp, nvlink.latency)
    for node in sorted({p.node for p in placements}):
        for side in ("out", "in"):
            links[f"net-{side}:{node}"] = Link(f"net-{side}:{node}", network.bandwidth, network.latency)
    return LinkPool(links), Paths(tuple(placements))
