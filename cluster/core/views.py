"""Requests as the router sees them: every request's SLO state in one `SLOState` (a row
per request, its `slot`), which the runtime feeds as tokens arrive, gathered into the
`RequestTable`s of a snapshot as columns, with no object per request."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from cluster.core.request import Request
from cluster.core.runtime import Runtime
from router.slo import SLO
from router.slostate import SLOState
from router.snapshot import EMPTY, RequestTable


class Running(Mapping):
    """The decoding requests of a snapshot, by instance: each instance's table is built
    when a policy first reads it (most decisions read none)."""

    def __init__(self, instances: list[int], build: Callable[[int], RequestTable]) -> None:
        self.instances, self.build, self.tables = instances, build, {}

    def __getitem__(self, instance: int) -> RequestTable:
        if instance not in self.tables:
            if instance not in self.instances:
                raise KeyError(instance)
            self.tables[instance] = self.build(instance)
        return self.tables[instance]

    def __iter__(self):
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)


class Views:
    def __init__(self, requests: list[Request], slos: dict[str, SLO], runtime: Runtime) -> None:
        self.rt = runtime
        self.tenants = tuple(slos)
        index = {tenant: k for k, tenant in enumerate(self.tenants)}
        for slot, request in enumerate(requests):
            request.slot = slot
        count = len(requests)
        self.ids = np.fromiter((r.id for r in requests), np.int64, count)
        self.prompts = np.fromiter((r.prompt for r in requests), np.int64, count)
        self.max_tokens = np.fromiter((r.max_tokens for r in requests), np.int64, count)
        self.slo = SLOState(np.fromiter((r.arrival for r in requests), np.float64, count),
                            [slos[tenant] for tenant in self.tenants],
                            np.fromiter((index[r.tenant] for r in requests), np.int64, count))

    def table(self, requests) -> RequestTable:
        """Requests waiting for a decision, as they are now."""
        requests = list(requests)
        if not requests:
            return EMPTY
        self.rt.fresh(requests)
        count = len(requests)
        slots = np.fromiter((r.slot for r in requests), np.int64, count)
        instances = np.fromiter((r.instance for r in requests), np.int64, count)
        context = np.fromiter((self.rt.context_of(r) for r in requests), np.int64, count)
        return self._table(slots, instances, context)

    def decoding(self, instance: int, leave_out: np.ndarray | None = None) -> RequestTable:
        """Requests decoding on `instance` (but the slots `leave_out`), as they are now:
        each holds the KV of its prompt and of every token it was given but the last."""
        slots = self.rt.decoding(instance)
        if leave_out is not None and len(leave_out):
            slots = slots[~np.isin(slots, leave_out)]
        if not len(slots):
            return EMPTY
        return self._table(slots, np.full(len(slots), instance), self.prompts[slots] + self.slo.n[slots] - 1)

    def _table(self, slots: np.ndarray, instances: np.ndarray, context: np.ndarray) -> RequestTable:
        state, now = self.slo, self.rt.now()
        arrival = state.arrival[slots]
        return RequestTable(self.ids[slots], arrival, self.prompts[slots], self.max_tokens[slots], state.n[slots],
                            instances, state.idle_s(slots, now), state.slack_s(slots, now), arrival + state.last[slots],
                            context, state.missed(slots, now), state.slo_index[slots], state.slos, self.tenants)
