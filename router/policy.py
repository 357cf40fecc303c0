"""Policies: the base class, the registry, and building one by name from config."""
from __future__ import annotations

import inspect
from typing import ClassVar

from router.actions import Action
from router.events import EVENTS
from router.snapshot import Snapshot

POLICIES: dict[str, type["Policy"]] = {}


class Policy:
    """Decides at the runtime's logical events. Subclasses set `name` and take their
    parameters as keyword arguments; they get time and randomness only from the
    snapshot and their constructor's `seed`."""

    name: ClassVar[str] = ""
    events: ClassVar[frozenset[str]] = frozenset()
    """Events (`router.events`) the policy wants to see even when no request awaits a decision."""
    needs_running: ClassVar[bool] = False
    """Whether the snapshot must list every decoding request (costs O(running))."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def decide(self, snapshot: Snapshot) -> list[Action]:
        raise NotImplementedError

    def choose_victim(self, snapshot: Snapshot, instance: int) -> int | None:
        """Which of `snapshot.running[instance]` the engine preempts when its KV runs out;
        None leaves vLLM's choice (the latest arrival)."""
        return None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.events) - set(EVENTS))
        if unknown:
            raise TypeError(f"policy {cls.__name__}: unknown events {unknown}; expected some of {list(EVENTS)}")
        if cls.name:
            POLICIES[cls.name] = cls


def make_policy(name: str, params: dict | None = None, seed: int = 0) -> Policy:
    import router.policies  # noqa: F401  (registers the built-in policies)

    if name not in POLICIES:
        raise ValueError(f"router.policy: unknown policy {name!r}; expected one of {sorted(POLICIES)}")
    accepted = [p for p in inspect.signature(POLICIES[name]).parameters if p != "seed"]
    for key in params or {}:
        if key not in accepted:
            raise ValueError(f"router.params.{key}: not a parameter of {name}; expected some of {accepted}")
    try:
        return POLICIES[name](seed=seed, **(params or {}))
    except ValueError as exc:
        raise ValueError(f"router.params: {exc}") from None
