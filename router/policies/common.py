"""What several policies share, vectorised over instances: predicted waits and step
times, KV room left after this decision's own choices, and picking the best."""
from __future__ import annotations

from functools import cached_property

import numpy as np

from router.actions import MIGRATION_MODES, Dispatch, Handoff
from router.snapshot import DECODE, PREFILL, Instances, RequestTable, RequestView, Snapshot


def migration_mode(policy: str, mode: str) -> str:
    if mode not in MIGRATION_MODES:
        raise ValueError(f"{policy}.mode: expected one of {list(MIGRATION_MODES)}, got {mode!r}")
    return mode


def blocks_needed(request: RequestView, instances: Instances) -> int:
    return -(-max(request.context_tokens, request.prompt_tokens) // instances.block_size)


def blocks_needed_all(table: RequestTable, instances: Instances) -> np.ndarray:
    """`blocks_needed` of every row."""
    return -(-np.maximum(table.context_tokens, table.prompt_tokens) // instances.block_size)


def by(*keys: np.ndarray) -> np.ndarray:
    """Row order sorted by `keys`, the first key first (stable, as `sorted`)."""
    return np.lexsort(keys[::-1])


class Headroom:
    """The instances as one decision sees them: each role's columns sliced once, then
    updated with what the decision already gave (queued prompt tokens, KV blocks,
    requests), so later choices in the same decision account for earlier ones."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    @cached_property
    def prefill(self) -> np.ndarray:
        return np.array(self.instances.serving(PREFILL), dtype=np.int64)

    @cached_property
    def _prefill_columns(self) -> tuple[np.ndarray, ...]:
        coeffs = self.instances.prefill_coeffs[self.prefill]
        return coeffs[:, 0], coeffs[:, 1], coeffs[:, 2], self.instances.queued_tokens[self.prefill].astype(np.float64)

    @cached_property
    def decode(self) -> np.ndarray:
        return np.array(self.instances.serving(DECODE), dtype=np.int64)

    @cached_property
    def _decode_columns(self) -> tuple[np.ndarray, ...]:
        i, d = self.instances, self.decode
        coeffs = i.decode_coeffs[d]
        return (coeffs[:, 0], coeffs[:, 1], coeffs[:, 2], i.running[d].astype(np.float64),
                i.context_tokens[d].astype(np.float64), (i.free_blocks[d] - i.watermark_blocks[d]).astype(np.float64),
                i.step_time_s[d])

    @cached_property
    def position(self) -> dict[int, int]:
        return {int(i): k for k, i in enumerate(self.decode)}

    @property
    def ahead(self) -> np.ndarray:
        return self._prefill_columns[3]

    @property
    def batch(self) -> np.ndarray:
        return self._decode_columns[3]

    @property
    def context(self) -> np.ndarray:
        return self._decode_columns[4]

    @property
    def rooms(self) -> np.ndarray:
        return self._decode_columns[5]

    @property
    def step_now(self) -> np.ndarray:
        return self._decode_columns[6]

    def first_token_s(self, request: RequestView) -> np.ndarray:
        """Predicted seconds to `request`'s first token on each prefill instance."""
        a, b, c, ahead = self._prefill_columns
        own = request.prompt_tokens
        return np.where(ahead > 0, a + b * ahead, 0.0) + a + b * own + c * own * own

    def prefill_s(self, prompt_tokens: np.ndarray) -> np.ndarray:
        """Predicted seconds of each prompt's own prefill on the fastest prefill instance."""
        a, b, c, _ = self._prefill_columns
        n = np.asarray(prompt_tokens, dtype=np.float64)[:, None]
        return (a + b * n + c * n * n).min(axis=1)

    def queue_wait_s(self) -> np.ndarray:
        """Predicted seconds each prefill instance needs for what is queued there."""
        a, b, _, ahead = self._prefill_columns
        return np.where(ahead > 0, a + b * ahead, 0.0)

    def fastest_prefill(self, request: RequestView) -> int | None:
        if not len(self.prefill):
            return None
        best = int(np.argmin(self.first_token_s(request)))
        self.ahead[best] += request.prompt_tokens
        return int(self.prefill[best])

    def within(self, table: RequestTable, limits: np.ndarray, exclude: int = -1) -> np.ndarray:
        """Per row of `table`: whether some decode instance but `exclude` has room for it
        and would step within `limits[row]` with it (`fitting` and `step_with` for all
        rows at once; what this decision gives later only makes fewer rows fit)."""
        a, b, c, batch, held = self._decode_columns[:5]
        ok = self.rooms[None, :] >= blocks_needed_all(table, self.instances)[:, None]
        if exclude in self.position:
            ok[:, self.position[exclude]] = False
        step = a + b * (batch + 1) + c * (held[None, :] + table.context_tokens[:, None])
        return (ok & (step <= limits[:, None])).any(axis=1)

    def fitting(self, request: RequestView, exclude: int = -1, growth: bool = False) -> np.ndarray:
        """Positions (in `decode`) of the decode instances with room for `request`; with
        `growth`, also for one more block per request already decoding there."""
        need = blocks_needed(request, self.instances)
        ok = self.rooms >= need + (self.batch if growth else 0)
        if exclude in self.position:
            ok[self.position[exclude]] = False
        return np.flatnonzero(ok)

    def step_with(self, positions: np.ndarray, context: int) -> np.ndarray:
        """Predicted decode step at `positions` with one more request holding `context` tokens."""
        a, b, c, batch, held = self._decode_columns[:5]
        return a[positions] + b[positions] * (batch[positions] + 1) + c[positions] * (held[positions] + context)

    def give(self, instance: int, request: RequestView) -> int:
        if instance in self.position:
            k = self.position[instance]
            self.rooms[k] -= blocks_needed(request, self.instances)
            self.batch[k] += 1
            self.context[k] += request.context_tokens
        return instance


def busy_instances(snapshot: Snapshot) -> tuple[np.ndarray, list[RequestTable]]:
    """Instances with decoding requests, in id order, and their requests."""
    ids = sorted(i for i in snapshot.running if len(snapshot.running[i]))
    return np.array(ids, dtype=np.int64), [snapshot.running[i] for i in ids]


def hand_off(snapshot: Snapshot, headroom: Headroom, order: np.ndarray, choose) -> list[Handoff]:
    """Hand off the rows of `snapshot.to_hand_off` in `order`: in place when colocated,
    else to `choose(snapshot, headroom, request)`, which is asked only when some decode
    instance has room; a request with no target waits."""
    table, actions = snapshot.to_hand_off, []
    if not len(table):
        return actions
    local = snapshot.instances.role[table.instance] != PREFILL
    need = blocks_needed_all(table, snapshot.instances)
    most = headroom.rooms.max() if len(headroom.rooms) else -1
    for k in order:
        if local[k]:
            actions.append(Handoff(int(table.id[k]), int(table.instance[k])))
        elif need[k] <= most:
            request = table.row(k)
            target = choose(snapshot, headroom, request)
            if target is not None:
                actions.append(Handoff(request.id, headroom.give(target, request)))
                most = headroom.rooms.max()
    return actions


def dispatch(snapshot: Snapshot, headroom: Headroom, order: np.ndarray | None = None,
             hold_s: float | None = None) -> list[Dispatch]:
    """The rows of `snapshot.to_dispatch` in `order` (default: as listed), each to the
    prefill instance that gives its first token soonest; none while none serves. With
    `hold_s`, only while some prefill instance would start it within `hold_s` (the rest
    wait here for the next decision, to be ordered again)."""
    table, actions = snapshot.to_dispatch, []
    for k in range(len(table)) if order is None else order:
        if hold_s is not None and len(headroom.prefill) and headroom.queue_wait_s().min() > hold_s:
            break
        request = table.row(int(k))
        target = headroom.fastest_prefill(request)
        if target is not None:
            actions.append(Dispatch(request.id, target))
    return actions


def most_slack(snapshot: Snapshot, instance: int) -> int | None:
    """The request on `instance` whose reader has the most text left to read."""
    table = snapshot.running.get(instance)
    if table is None or not len(table):
        return None
    return int(table.id[by(table.slack_s, table.id)[-1]])
