"""Everything a run needs, built from an experiment config: the instances, the router's
table and policy, the requests and their SLOs, the links and what moving KV costs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec
from migration.cost import TransferCost
from migration.links import LinkPool
from router.policy import Policy
from router.slo import SLO
from router.snapshot import InstanceTable


@dataclass
class RunSetup:
    instances: list[InstanceSpec]
    table: InstanceTable
    policy: Policy
    requests: list[Request]
    slos: dict[str, SLO]
    links: LinkPool
    path: Callable[[int, int], tuple[str, ...]]
    cost: TransferCost
    kv_bytes_per_token: float
    horizon_s: float = float("inf")
    tick_s: float | None = None
    veto: frozenset[int] = frozenset()
    """Numbers of the router's moves (migrations, preemptions) to drop, for counterfactuals."""
