"""Building a policy by name from config, from the registry of `router.policy` (the
built-in policies of `router.policies` register themselves when imported)."""
from __future__ import annotations

import inspect

import router.policies  # noqa: F401  (registers the built-in policies)
from router.policy import POLICIES, Policy


def make_policy(name: str, params: dict | None = None, seed: int = 0) -> Policy:
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
