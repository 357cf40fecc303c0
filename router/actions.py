"""What a policy may ask of a runtime: the actions of the decision point."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Queue a new request for prefill on `instance`."""
    request: int
    instance: int


@dataclass(frozen=True, slots=True)
class Handoff:
    """Send a prefilled request's KV cache to decode instance `target` (its own instance: decode in place)."""
    request: int
    target: int


MIGRATION_MODES = ("live", "recompute")
PREEMPTION_MODES = ("recompute", "swap")


def _check_mode(action, modes: tuple[str, ...]) -> None:
    if action.mode not in modes:
        raise ValueError(f"{type(action).__name__} mode: expected {' or '.join(map(repr, modes))}, got {action.mode!r}")


@dataclass(frozen=True, slots=True)
class Migrate:
    """Move a decoding request to `target`: `live` copies its KV while it keeps decoding, `recompute` re-prefills there."""
    request: int
    target: int
    mode: str = "live"
    rule: str = ""
    """The policy's rule that made the move (its `Policy.rules`), for ablations and the harm report."""

    def __post_init__(self) -> None:
        _check_mode(self, MIGRATION_MODES)


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop a running request and free its KV: `recompute` drops it, `swap` copies it to host memory."""
    request: int
    mode: str = "recompute"
    rule: str = ""

    def __post_init__(self) -> None:
        _check_mode(self, PREEMPTION_MODES)


@dataclass(frozen=True, slots=True)
class Resume:
    """Put a preempted request back in `instance`'s queue."""
    request: int
    instance: int


@dataclass(frozen=True, slots=True)
class Reject:
    request: int
    reason: str = "rejected by policy"
    rule: str = ""


Action = Dispatch | Handoff | Migrate | Preempt | Resume | Reject


def take_waiting(waiting: dict, action, verb: str, policy: str):
    """The request `action` names, out of `waiting`; a clear error if it is not there."""
    request = waiting.pop(action.request, None)
    if request is None:
        raise ValueError(f"policy {policy!r} asked to {verb} request {action.request}, which is not waiting for that")
    return request


def live_instance(alive, index: int, action, policy: str) -> int:
    """`index`, if it names a live instance; a clear error if not."""
    if not 0 <= index < len(alive) or not alive[index]:
        raise ValueError(f"policy {policy!r}: {action} names no live instance")
    return index
