"""The read-only view of the cluster that a policy decides on.

Instances are columns of numpy arrays indexed by instance id, kept up to date by
the runtime and handed out as read-only views, so building a snapshot costs O(1).
A snapshot is valid for the duration of one `decide` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from router.slo import SLO

PREFILL, DECODE, COLOCATED = 0, 1, 2
ROLES = {"prefill": PREFILL, "decode": DECODE, "colocated": COLOCATED}
INSTANCE_COLUMNS = ("role", "node", "alive", "total_blocks", "free_blocks", "watermark_blocks",
                    "queued", "queued_tokens", "running", "context_tokens", "step_time_s", "prefill_coeffs",
                    "decode_coeffs", "host_free_blocks", "swap_s_per_token")
NO_LIMIT = 2**62


@dataclass(frozen=True)
class Instances:
    role: np.ndarray
    node: np.ndarray
    alive: np.ndarray
    total_blocks: np.ndarray
    free_blocks: np.ndarray
    watermark_blocks: np.ndarray
    queued: np.ndarray
    queued_tokens: np.ndarray
    """Prompt tokens still to prefill: queued, and those of prefills under way."""
    running: np.ndarray
    context_tokens: np.ndarray
    step_time_s: np.ndarray
    prefill_coeffs: np.ndarray
    decode_coeffs: np.ndarray
    host_free_blocks: np.ndarray
    """KV blocks of host memory free for parking (swapping out) requests."""
    swap_s_per_token: np.ndarray
    """Seconds to copy one token of KV between GPU and host memory, each way."""
    block_size: int
    by_role: dict[int, tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.role)

    def serving(self, role: int) -> tuple[int, ...]:
        """Ids of live instances that can do `role`'s work (a colocated one does both)."""
        return self.by_role[role]

    def decode_step_s(self, instance: int, add_batch: int = 0, add_context: int = 0) -> float:
        """Predicted decode step time with `add_batch` more requests holding `add_context` more tokens."""
        a, b, c = self.decode_coeffs[instance]
        batch = self.running[instance] + add_batch
        return 0.0 if batch <= 0 else a + b * batch + c * (self.context_tokens[instance] + add_context)

    def prefill_s(self, instance: int, tokens: int) -> float:
        a, b, c = self.prefill_coeffs[instance]
        return 0.0 if tokens <= 0 else a + b * tokens + c * tokens * tokens

    def queue_wait_s(self, instance: int) -> float:
        """Predicted time to prefill what is queued, as one batch (a lower bound)."""
        a, b, _ = self.prefill_coeffs[instance]
        queued = self.queued_tokens[instance]
        return 0.0 if queued <= 0 else a + b * queued


@dataclass(frozen=True, slots=True)
class RequestView:
    """A request as a policy sees it. `idle_s` counts the wait for the next token up to
    now; `missed` says it already broke its `ttft_tbt` SLO; `context_tokens` is the KV it
    holds (what a migration moves)."""
    id: int
    tenant: str
    arrival_s: float
    prompt_tokens: int
    max_output_tokens: int
    generated: int
    instance: int
    idle_s: float
    slack_s: float
    last_token_s: float
    context_tokens: int
    missed: bool
    slo: SLO


COLUMNS = ("id", "arrival_s", "prompt_tokens", "max_output_tokens", "generated", "instance", "idle_s", "slack_s",
           "last_token_s", "context_tokens", "missed")


@dataclass(frozen=True)
class RequestTable:
    """Requests as a policy sees them, one row each, as columns (the fields of
    `RequestView`; each row's SLO is `slos[slo_index]`, its tenant `tenants[slo_index]`).
    Iterating gives one `RequestView` per row; a policy that reads the columns never
    builds them."""
    id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    max_output_tokens: np.ndarray
    generated: np.ndarray
    instance: np.ndarray
    idle_s: np.ndarray
    slack_s: np.ndarray
    last_token_s: np.ndarray
    context_tokens: np.ndarray
    missed: np.ndarray
    slo_index: np.ndarray
    slos: tuple[SLO, ...] = ()
    tenants: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.id)

    def __iter__(self):
        return (self.row(k) for k in range(len(self.id)))

    def __getitem__(self, k):
        """Row `k` as a `RequestView`; a slice or an index array gives the table of those rows."""
        if isinstance(k, (int, np.integer)):
            return self.row(int(k))
        return RequestTable(*(getattr(self, name)[k] for name in (*COLUMNS, "slo_index")), self.slos, self.tenants)

    def row(self, k: int) -> RequestView:
        s = int(self.slo_index[k])
        return RequestView(int(self.id[k]), self.tenants[s], float(self.arrival_s[k]), int(self.prompt_tokens[k]),
                           int(self.max_output_tokens[k]), int(self.generated[k]), int(self.instance[k]),
                           float(self.idle_s[k]), float(self.slack_s[k]), float(self.last_token_s[k]),
                           int(self.context_tokens[k]), bool(self.missed[k]), self.slos[s])

    def slo_column(self, field: str) -> np.ndarray:
        """An SLO parameter (`v`, `tbt`, ...) per row."""
        return np.array([getattr(slo, field) for slo in self.slos], dtype=np.float64)[self.slo_index] \
            if len(self.id) else np.zeros(0)

    @classmethod
    def of(cls, views) -> RequestTable:
        """The table of `RequestView`s (one row each, in order)."""
        views = tuple(views)
        slos = tuple(dict.fromkeys((v.slo, v.tenant) for v in views))
        index = {key: k for k, key in enumerate(slos)}
        columns = {name: np.array([getattr(v, name) for v in views]) for name in COLUMNS}
        return cls(**columns, slo_index=np.array([index[(v.slo, v.tenant)] for v in views], dtype=np.int64),
                   slos=tuple(slo for slo, _ in slos), tenants=tuple(tenant for _, tenant in slos))


EMPTY = RequestTable.of(())


@dataclass(frozen=True)
class Snapshot:
    """What a policy decides on. The request groups are `RequestTable`s (a tuple of
    `RequestView`s given here is made one)."""
    now: float
    event: str
    instances: Instances
    to_dispatch: RequestTable = EMPTY
    to_hand_off: RequestTable = EMPTY
    preempted: RequestTable = EMPTY
    running: Mapping[int, RequestTable] = field(default_factory=dict)
    """Decoding requests by instance (those with any), when the policy `needs_running`."""
    slos: tuple[SLO, ...] = ()
    """Every SLO a request of the run may have (empty: not known)."""

    def steps_within(self, limit: str) -> bool:
        """Whether every instance's decode step is within the SLO field `limit` (`v`, `tbt`,
        `tpot`) of every request: then no decoding request need be looked at to know that
        none runs slower than that. False when the SLOs are not known."""
        if not self.slos:
            return False
        return bool((self.instances.step_time_s <= min(getattr(slo, limit) for slo in self.slos)).all())

    def __post_init__(self) -> None:
        for name in ("to_dispatch", "to_hand_off", "preempted"):
            if not isinstance(getattr(self, name), RequestTable):
                object.__setattr__(self, name, RequestTable.of(getattr(self, name)))
        if isinstance(self.running, dict) and any(not isinstance(t, RequestTable) for t in self.running.values()):
            object.__setattr__(self, "running", {i: t if isinstance(t, RequestTable) else RequestTable.of(t)
                                                 for i, t in self.running.items()})


class InstanceTable:
    """The runtime's writable side of `Instances`."""

    def __init__(self, roles: list[int], nodes: list[int], total_blocks: list[int], watermark_blocks: list[int],
                 block_size: int, prefill_coeffs: list[tuple[float, float, float]],
                 decode_coeffs: list[tuple[float, float, float]], host_blocks: list[int] | None = None,
                 swap_s_per_token: list[float] | None = None) -> None:
        n = len(roles)
        self.role = np.array(roles, dtype=np.int8)
        self.node = np.array(nodes, dtype=np.int32)
        self.alive = np.ones(n, dtype=bool)
        self.total_blocks = np.array(total_blocks, dtype=np.int64)
        self.free_blocks = self.total_blocks.copy()
        self.watermark_blocks = np.array(watermark_blocks, dtype=np.int64)
        self.queued = np.zeros(n, dtype=np.int64)
        self.queued_tokens = np.zeros(n, dtype=np.int64)
        self.running = np.zeros(n, dtype=np.int64)
        self.context_tokens = np.zeros(n, dtype=np.int64)
        self.step_time_s = np.zeros(n, dtype=np.float64)
        self.prefill_coeffs = np.array(prefill_coeffs, dtype=np.float64).reshape(n, 3)
        self.decode_coeffs = np.array(decode_coeffs, dtype=np.float64).reshape(n, 3)
        self.host_free_blocks = np.array(host_blocks if host_blocks is not None else [NO_LIMIT] * n, dtype=np.int64)
        self.swap_s_per_token = np.array(swap_s_per_token if swap_s_per_token is not None else [0.0] * n,
                                         dtype=np.float64)
        self.by_role: dict[int, tuple[int, ...]] = {}
        self._index_roles()
        self._make_view(block_size)

    def _make_view(self, block_size: int) -> None:
        views = {}
        for column in INSTANCE_COLUMNS:
            view = getattr(self, column).view()
            view.flags.writeable = False
            views[column] = view
        self.view = Instances(block_size=block_size, by_role=self.by_role, **views)

    def __getstate__(self) -> dict:
        """A copy (a forked simulator's) gets views of its own columns, not frozen copies of these."""
        state = dict(self.__dict__)
        state["view"] = state["view"].block_size
        return state

    def __setstate__(self, state: dict) -> None:
        block_size = state.pop("view")
        self.__dict__.update(state)
        self._make_view(block_size)

    def set_alive(self, instance: int, alive: bool) -> None:
        self.alive[instance] = alive
        self._index_roles()

    def _index_roles(self) -> None:
        for role in (PREFILL, DECODE):
            serving = self.alive & ((self.role == role) | (self.role == COLOCATED))
            self.by_role[role] = tuple(int(i) for i in np.flatnonzero(serving))
