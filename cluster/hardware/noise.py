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
from pydantic import Field, PositiveFloat, model_validator

from cluster.hardware.yamlfile import Strict

KINDS = ("prefill", "decode", "mixed")
DRAWS = 4096


@dataclass(frozen=True)
class Band:
    """Ratios measured/modelled of the steps modelled to take up to `up_to_s`, as
    quantiles: `probabilities` (0 to 1, rising) and their `ratios` (rising)."""
    probabilities: tuple[float, ...]
    ratios: tuple[float, ...]
    up_to_s: float = math.inf

    def __post_init__(self) -> None:
        p, r = np.asarray(self.probabilities, dtype=float), np.asarray(self.ratios, dtype=float)
        if len(p) < 2 or len(p) != len(r) or p[0] != 0 or p[-1] != 1 or np.any(np.diff(p) <= 0):
            raise ValueError(f"quantiles: expected probabilities rising from 0 to 1, one ratio each, got "
                             f"{dict(zip(self.probabilities, self.ratios))}")
        if not np.all(np.isfinite(r)) or r[0] <= 0 or np.any(np.diff(r) < 0):
            raise ValueError(f"quantiles: expected ratios > 0 that do not fall as the probability rises, got "
                             f"{list(self.ratios)}")
        if not self.up_to_s > 0:
            raise ValueError(f"up_to_s: expected seconds > 0, got {self.up_to_s!r}")

    def ratio(self, u: float) -> float:
        return float(np.interp(u, self.probabilities, self.ratios))

    def quantile(self, probability: float) -> float:
        return self.ratio(probability)


@dataclass(frozen=True)
class StepNoise:
    """The bands of each step kind, by rising `up_to_s` (the last open-ended). A kind
    without bands takes decode's (mixed) or none (prefill: no noise)."""
    bands: dict[str, tuple[Band, ...]] = field(default_factory=dict)
    source: str = ""

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

    def time(self, kind: str, modelled_s: float) -> float:
        band = self.noise.band(kind, modelled_s)
        if band is None or modelled_s <= 0:
            return modelled_s
        if self.next == DRAWS:
            self.uniforms, self.next = self.rng.random(DRAWS), 0
        u = self.uniforms[self.next]
        self.next += 1
        return modelled_s * band.ratio(u)


class BandSection(Strict):
    up_to_s: PositiveFloat | None = None
    quantiles: dict[float, PositiveFloat] = Field(min_length=2)

    @model_validator(mode="after")
    def _band(self) -> BandSection:
        self.band()
        return self

    def band(self) -> Band:
        pairs = sorted(self.quantiles.items())
        return Band(tuple(p for p, _ in pairs), tuple(r for _, r in pairs),
                    math.inf if self.up_to_s is None else self.up_to_s)


class NoiseSection(Strict):
    """A `noise:` section: per step kind, bands `{up_to_s: S, quantiles: {P: RATIO}}`."""
    prefill: list[BandSection] | None = None
    decode: list[BandSection] | None = None
    mixed: list[BandSection] | None = None
    source: str = ""

    @model_validator(mode="after")
    def _noise(self) -> NoiseSection:
        self.noise()
        return self

    def noise(self) -> StepNoise:
        return StepNoise({kind: tuple(b.band() for b in getattr(self, kind)) for kind in KINDS
                          if getattr(self, kind) is not None}, self.source)


def noise_as_mapping(noise: StepNoise) -> dict:
    """`noise` as a `noise:` section."""
    out: dict = {kind: [{**({} if band.up_to_s == math.inf else {"up_to_s": band.up_to_s}),
                         "quantiles": {float(p): float(r) for p, r in zip(band.probabilities, band.ratios)}}
                        for band in bands] for kind, bands in noise.bands.items()}
    if noise.source:
        out["source"] = noise.source
    return out
