"""Step-time noise: how much an engine's iterations vary around the iteration-time
model. A step takes the model's time times a ratio drawn from an empirical
distribution (quantiles, linearly interpolated) of its kind (prefill, decode, mixed)
and of the band its modelled time falls in. Fitted from a live run's steps by `pdlab
calibrate` (`experiments/calibration/noise.py`) or written by hand; drawn from a seeded
generator, so a run with the same seed is the same run (docs/perfmodel.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from cluster.hardware.yamlfile import Strict

KINDS = ("prefill", "decode", "mixed")
DRAWS = 4096


@dataclass(frozen=True)
class Quantiles:
    """A distribution as quantiles: `probabilities` (0 to 1, rising) and their `values`
    (not falling), linearly interpolated between."""
    probabilities: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        p, v = np.asarray(self.probabilities, dtype=float), np.asarray(self.values, dtype=float)
        if len(p) < 2 or len(p) != len(v) or p[0] != 0 or p[-1] != 1 or np.any(np.diff(p) <= 0):
            raise ValueError(f"quantiles: expected probabilities rising from 0 to 1, one value each, got "
                             f"{dict(zip(self.probabilities, self.values))}")
        if not np.all(np.isfinite(v)) or v[0] < 0 or np.any(np.diff(v) < 0):
            raise ValueError(f"quantiles: expected values >= 0 that do not fall as the probability rises, got "
                             f"{list(self.values)}")

    def quantile(self, probability: float) -> float:
        return float(np.interp(probability, self.probabilities, self.values))


@dataclass(frozen=True)
class Band(Quantiles):
    """Ratios measured/modelled of the steps modelled to take up to `up_to_s`."""
    up_to_s: float = math.inf

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.values[0] <= 0:
            raise ValueError(f"quantiles: expected ratios > 0, got {self.values[0]!r}")
        if not self.up_to_s > 0:
            raise ValueError(f"up_to_s: expected seconds > 0, got {self.up_to_s!r}")


@dataclass(frozen=True)
class StepNoise:
    """The bands of each step kind, by rising `up_to_s` (the last open-ended). A kind
    without bands takes decode's (mixed) or none (prefill: no noise). `handoff`: the
    seconds a KV transfer stage takes beyond its modelled time (the control round trip
    of a live cluster: report, decision, the pull's calls). `dispatch`: the seconds a
    request takes to reach an instance's queue once the router sent it there (the
    driver's call to the worker), which the simulator otherwise takes as none."""
    bands: dict[str, tuple[Band, ...]] = field(default_factory=dict)
    source: str = ""
    handoff: Quantiles | None = None
    dispatch: Quantiles | None = None

    def __post_init__(self) -> None:
        for kind, bands in self.bands.items():
            if kind not in KINDS:
                raise ValueError(f"expected step kinds among {list(KINDS)}, got {kind!r}")
            edges = [band.up_to_s for band in bands]
            if not bands or edges[-1] != math.inf or any(b >= a for a, b in zip(edges[1:], edges)):
                raise ValueError(f"{kind}: expected bands by rising up_to_s, the last without one, got {edges}")

    def band(self, kind: str, modelled_s: float) -> Band | None:
        bands = self.bands.get(kind) or (self.bands.get("decode") if kind == "mixed" else None)
        if not bands:
            return None
        for band in bands:
            if modelled_s <= band.up_to_s:
                return band
        return bands[-1]


class NoiseDraws:
    """One instance's draws: the step's modelled time times its drawn ratio."""

    def __init__(self, noise: StepNoise, seed: int, instance: int) -> None:
        self.noise = noise
        self.rng = np.random.default_rng([seed, instance])
        self.uniforms, self.next = self.rng.random(DRAWS), 0

    def _uniform(self) -> float:
        if self.next == DRAWS:
            self.uniforms, self.next = self.rng.random(DRAWS), 0
        self.next += 1
        return self.uniforms[self.next - 1]

    def time(self, kind: str, modelled_s: float) -> float:
        band = self.noise.band(kind, modelled_s)
        if band is None or modelled_s <= 0:
            return modelled_s
        return modelled_s * band.quantile(self._uniform())

    def handoff_s(self) -> float:
        """Seconds a transfer stage takes beyond its modelled time (0 without `handoff`)."""
        return 0.0 if self.noise.handoff is None else self.noise.handoff.quantile(self._uniform())

    def dispatch_s(self) -> float:
        """Seconds a request takes to reach its instance's queue (0 without `dispatch`)."""
        return 0.0 if self.noise.dispatch is None else self.noise.dispatch.quantile(self._uniform())


class QuantilesSection(Strict):
    quantiles: dict[float, NonNegativeFloat] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> QuantilesSection:
        self.made()
        return self

    def pairs(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        pairs = sorted(self.quantiles.items())
        return tuple(p for p, _ in pairs), tuple(v for _, v in pairs)

    def made(self) -> Quantiles:
        return Quantiles(*self.pairs())


class BandSection(QuantilesSection):
    up_to_s: PositiveFloat | None = None

    def made(self) -> Band:
        return Band(*self.pairs(), math.inf if self.up_to_s is None else self.up_to_s)


class NoiseSection(Strict):
    """A `noise:` section: per step kind, bands `{up_to_s: S, quantiles: {P: RATIO}}`;
    `handoff` and `dispatch`: `{quantiles: {P: SECONDS}}`."""
    prefill: list[BandSection] | None = None
    decode: list[BandSection] | None = None
    mixed: list[BandSection] | None = None
    handoff: QuantilesSection | None = None
    dispatch: QuantilesSection | None = None
    source: str = ""

    @model_validator(mode="after")
    def _noise(self) -> NoiseSection:
        self.noise()
        return self

    def noise(self) -> StepNoise:
        return StepNoise({kind: tuple(b.made() for b in getattr(self, kind)) for kind in KINDS
                          if getattr(self, kind) is not None}, self.source,
                         *(None if part is None else part.made() for part in (self.handoff, self.dispatch)))


def noise_as_mapping(noise: StepNoise) -> dict:
    """`noise` as a `noise:` section."""
    def quantiles(q: Quantiles) -> dict:
        return {float(p): float(v) for p, v in zip(q.probabilities, q.values)}

    out: dict = {kind: [{**({} if band.up_to_s == math.inf else {"up_to_s": band.up_to_s}),
                         "quantiles": quantiles(band)} for band in bands] for kind, bands in noise.bands.items()}
    for name in ("handoff", "dispatch"):
        if getattr(noise, name) is not None:
            out[name] = {"quantiles": quantiles(getattr(noise, name))}
    if noise.source:
        out["source"] = noise.source
    return out
