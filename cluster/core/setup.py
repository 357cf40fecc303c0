"""Everything a run needs, built from an experiment config: the instances, the router's
table and policy, the requests and their SLOs, the links and what moving KV costs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec
from cluster.hardware.noise import NoiseDraws
from migration.cost import TransferCost
from migration.links import LinkPool
from router.policy import Policy
from router.slo import SLO
from router.snapshot import InstanceTable

VETO_KINDS = ("migrate", "migrate:live", "migrate:recompute", "preempt", "preempt:recompute", "preempt:swap",
              "reject")


RULE = "rule:"
"""A veto kind `rule:NAME` drops every decision the policy's rule NAME made (`Policy.rules`)."""


@dataclass(frozen=True)
class Veto:
    """The router's decisions to drop, for counterfactuals: by number, or every one of a
    kind (`VETO_KINDS`: an action, or an action and its mode; or `rule:NAME`, those of one
    of the policy's rules). A vetoed rejection is replayed as an admission: the request is served."""
    decisions: frozenset[int] = frozenset()
    kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(k for k in self.kinds if k not in VETO_KINDS and not (k.startswith(RULE) and k[len(RULE):]))
        if unknown:
            raise ValueError(f"veto: expected kinds among {', '.join(VETO_KINDS)} or rule:NAME, "
                             f"got {', '.join(unknown)}")

    def covers(self, decision: int, kind: str, mode: str, rule: str = "") -> bool:
        return (decision in self.decisions or kind in self.kinds or f"{kind}:{mode}" in self.kinds
                or bool(rule) and RULE + rule in self.kinds)

    def check_rules(self, policy: type[Policy]) -> None:
        """That every `rule:NAME` names one of `policy`'s rules."""
        for kind in sorted(self.kinds):
            if kind.startswith(RULE) and kind[len(RULE):] not in policy.rules:
                known = ", ".join(RULE + name for name in policy.rules) or "none"
                raise ValueError(f"veto {kind}: policy {policy.name!r} has no such rule; its rules: {known}")

    def __bool__(self) -> bool:
        return bool(self.decisions or self.kinds)


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
    veto: Veto = field(default_factory=Veto)
    overheads: NoiseDraws | None = None
    """Draws of the control path's seconds beyond the model (`StepNoise.handoff`, `.dispatch`)."""

    def stage_overhead_s(self) -> float:
        """The fixed cost of one KV transfer stage: the configured one, plus a draw of
        the hand-off noise where the fit has one."""
        return self.cost.stage_overhead_s + (self.overheads.handoff_s() if self.overheads is not None else 0.0)

    def dispatch_s(self) -> float:
        """Seconds a request takes to reach the queue it was sent to (a draw of the
        dispatch noise where the fit has one, else none)."""
        return self.overheads.dispatch_s() if self.overheads is not None else 0.0
