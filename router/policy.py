"""Policies: the base class; each subclass with a `name` registers itself in `POLICIES`."""
from __future__ import annotations

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
    rules: ClassVar[dict[str, str]] = {}
    """The rules that make the policy's moves and rejections (each action's `rule`), with
    what each does: what `pdlab ablate --veto rule:NAME` vetoes and the harm report splits by."""

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
        if any(not name.isidentifier() for name in cls.rules):
            raise TypeError(f"policy {cls.__name__}: rule names must be identifiers, got {sorted(cls.rules)}")
        if cls.name:
            POLICIES[cls.name] = cls
