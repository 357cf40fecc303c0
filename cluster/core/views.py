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
    """The decoding requests of a snapshot, by instance, built when a policy first reads
    them (most decisions read none): the first instance read on its own, the rest all
    at once when a second is read (a policy that reads two reads them all)."""

    def __init__(self, instances: list[int], views: Views, leave_out: np.ndarray) -> None:
        self.instances, self.known, self.tables = instances, set(instances), {}
        self.views, self.leave_out = views, leave_out

    def __getitem__(self, instance: int) -> RequestTable:
        if instance not in self.tables:
            if instance not in self.known:
                raise KeyError(instance)
            if not self.tables:
                self.tables[instance] = self.views.decoding(instance, self.leave_out)
            else:
                rest = [i for i in self.instances if i not in self.tables]
                table, bounds = self.views.decoding_all(rest, self.leave_out)
                for k, i in enumerate(rest):
                    self.tables[i] = table[bounds[k]:bounds[k + 1]] if bounds[k + 1] > bounds[k] else EMPTY
        return self.tables[instance]

    def __iter__(self):
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)


class Views:
    def __init__(self, requests: list[Request], slos: dict[str, SLO], runtime: Runtime) -> None:
        self.rt = runtime
        self.tenants = tuple(slos)
        self.tenant_index = index = {tenant: k for k, tenant in enumerate(self.tenants)}
        for slot, request in enumerate(requests):
            request.slot = slot
        count = len(requests)
        self.ids = np.fromiter((r.id for r in requests), np.int64, count)
        self.prompts = np.fromiter((r.prompt for r in requests), np.int64, count)
        self.max_tokens = np.fromiter((r.max_tokens for r in requests), np.int64, count)
        self.slo = SLOState(np.fromiter((r.arrival for r in requests), np.float64, count),
                            [slos[tenant] for tenant in self.tenants],
                            np.fromiter((index[r.tenant] for r in requests), np.int64, count))

    def add(self, request: Request) -> None:
        """A request that arrives while the run goes on gets the next slot."""
        request.slot = self.slo.add(request.arrival, self.tenant_index[request.tenant])
        if request.slot >= len(self.ids):
            grow = len(self.slo.arrival) - len(self.ids)
            self.ids, self.prompts, self.max_tokens = (np.concatenate([column, np.zeros(grow, dtype=np.int64)])
                                                       for column in (self.ids, self.prompts, self.max_tokens))
        self.ids[request.slot], self.prompts[request.slot] = request.id, request.prompt
        self.max_tokens[request.slot] = request.max_tokens

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
        slots = self._decoding_slots(instance, leave_out)
        if not len(slots):
            return EMPTY
        return self._table(slots, np.full(len(slots), instance), self.prompts[slots] + self.slo.n[slots] - 1)

    def decoding_all(self, instances: list[int], leave_out: np.ndarray | None = None) \
            -> tuple[RequestTable, np.ndarray]:
        """`decoding` of every one of `instances` in one table, instance after instance,
        and where each one's rows start (then where the last ends)."""
        parts = [self._decoding_slots(instance, leave_out) for instance in instances]
        bounds = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(part) for part in parts], out=bounds[1:])
        if not bounds[-1]:
            return EMPTY, bounds
        slots = np.concatenate(parts)
        where = np.repeat(np.asarray(instances, dtype=np.int64), np.diff(bounds))
        return self._table(slots, where, self.prompts[slots] + self.slo.n[slots] - 1), bounds

    def _decoding_slots(self, instance: int, leave_out: np.ndarray | None) -> np.ndarray:
        slots = self.rt.decoding(instance)
        if leave_out is not None and len(leave_out):
            slots = slots[~np.isin(slots, leave_out)]
        return slots

    def _table(self, slots: np.ndarray, instances: np.ndarray, context: np.ndarray) -> RequestTable:
        state, now = self.slo, self.rt.now()
        arrival = state.arrival[slots]
        return RequestTable(self.ids[slots], arrival, self.prompts[slots], self.max_tokens[slots], state.n[slots],
                            instances, state.idle_s(slots, now), state.slack_s(slots, now), arrival + state.last[slots],
                            context, state.missed(slots, now), state.slo_index[slots], state.slos, self.tenants)
