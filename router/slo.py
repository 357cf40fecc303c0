"""SLO parameters and the benefit of a request (metrics.md: deadline schemes, eq. 7).

One `SLO` holds every parameter of every scheme, so a run is scored under all of
them at once. Functions here take scalars or numpy arrays alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np

SCHEMES = ("ttft_tbt", "ttft_tpot", "e2e", "smooth")
TOLERANCE_S = 1e-9  # a token within a nanosecond of its deadline is on time: float sums are not exact


@dataclass(frozen=True)
class SLO:
    ttft: float = 1.0
    tbt: float = 0.1
    tpot: float = 0.1
    e2e: float = 60.0
    v: float = 0.1
    l: float = 1.0
    alpha: float = 5.0
    f: str = "tokens"
    l_max: float = 10.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "f":
                if value not in BENEFIT_PENALTIES:
                    raise ValueError(
                        f"slo.f: expected one of {sorted(BENEFIT_PENALTIES)}, got {value!r}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"slo.{field.name}: expected a finite number, got {value!r}")
            positive = field.name in ("tbt", "tpot", "v", "l_max")
            if value < 0 or (positive and value == 0):
                need = "> 0" if positive else ">= 0"
                raise ValueError(f"slo.{field.name}: expected a number {need}, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)


SLO_KEYS = tuple(field.name for field in fields(SLO))


def check_slo(values: dict) -> dict:
    """SLO parameters as a config gives them (any of `SLO_KEYS`), checked; errors name the key."""
    for key in values:
        if key not in SLO_KEYS:
            raise ValueError(f"{key}: unknown SLO key; expected one of {list(SLO_KEYS)}")
    try:
        SLO(**values)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("slo.")) from None
    return values


Penalty = Callable[[np.ndarray, np.ndarray, np.ndarray, SLO], np.ndarray]


def _tokens(idle, n, finished, slo: SLO):
    return idle / slo.v


def _seconds(idle, n, finished, slo: SLO):
    return idle * 1.0


def _fraction(idle, n, finished, slo: SLO):
    return n * np.minimum(1.0, idle / slo.l_max)


def _step(idle, n, finished, slo: SLO):
    return n * ((idle > slo.l + TOLERANCE_S) | np.logical_not(finished))


BENEFIT_PENALTIES: dict[str, Penalty] = {
    "tokens": _tokens,
    "seconds": _seconds,
    "fraction": _fraction,
    "step": _step,
}


def benefit(n, idle, finished, slo: SLO):
    """`n - alpha * f(idle)`; `step` also counts an unfinished request as missed,
    so that with alpha 1 it equals classic token goodput under `smooth`."""
    return n - slo.alpha * BENEFIT_PENALTIES[slo.f](idle, n, finished, slo)
