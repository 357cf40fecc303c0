"""Arrival processes: when requests arrive (Poisson, gamma with a chosen burstiness,
constant rate, or a replayed trace), as sorted times in seconds from 0.

Every process draws its gaps from one generator in sequence, so the first n
arrivals do not depend on how many are drawn, and a Poisson or gamma stream at
another rate is the same stream scaled in time (common random numbers for sweeps).
"""
from __future__ import annotations

import math
from typing import Annotated, Callable, Literal, Union

import numpy as np
from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from cluster.hardware.yamlfile import Strict
from experiments.workloads.lengths import read_table, resolve_data_file

Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ArrivalBase(Strict):

    def times(self, rng: np.random.Generator, limit: int | None, horizon: float | None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """At most `limit` arrivals before `horizon` seconds, the first at 0; with the
        trace rows replayed (None for processes that are not a trace)."""
        raise NotImplementedError


def _renewal(gaps: Callable[[int], np.ndarray], mean_gap: float, limit: int | None,
             horizon: float | None) -> np.ndarray:
    """Arrival times from i.i.d. gaps, the first at 0, drawn in blocks until enough."""
    if horizon is None:
        drawn = gaps(limit)
        return np.cumsum(drawn) - drawn
    expected = horizon / mean_gap
    block = int(expected + 6 * math.sqrt(expected) + 16)
    blocks, count, span = [], 0, 0.0
    while span <= horizon and (limit is None or count < limit):
        size = block if limit is None else min(block, limit - count)
        blocks.append(gaps(size))
        count, span = count + size, span + float(blocks[-1].sum())
    drawn = np.concatenate(blocks)
    times = np.cumsum(drawn) - drawn
    return times[: np.searchsorted(times, horizon, side="left")]


class PoissonArrival(ArrivalBase):
    process: Literal["poisson"]
    rate: Rate

    def times(self, rng, limit, horizon):
        return _renewal(lambda n: rng.standard_exponential(n) / self.rate, 1 / self.rate, limit, horizon), None


class GammaArrival(ArrivalBase):
    """Gamma gaps with mean 1/rate and coefficient of variation `cv` (cv 1 is Poisson,
    above 1 burstier, below 1 more regular)."""
    process: Literal["gamma"]
    rate: Rate
    cv: float = Field(gt=0, allow_inf_nan=False)

    def times(self, rng, limit, horizon):
        shape = 1 / self.cv**2
        scale = 1 / (self.rate * shape)
        return _renewal(lambda n: rng.gamma(shape, scale, n), 1 / self.rate, limit, horizon), None


class ConstantArrival(ArrivalBase):
    process: Literal["constant"]
    rate: Rate

    def times(self, rng, limit, horizon):
        count = limit if horizon is None else math.ceil(horizon * self.rate) + 1
        times = np.arange(count if limit is None else min(count, limit)) / self.rate
        return (times if horizon is None else times[times < horizon]), None


class TraceArrival(ArrivalBase):
    """Replays a trace's time column (TIMESTAMP or arrival_s) from trace second
    `start_s`, `limit` rows at most, sped up by `time_scale` (or scaled to a mean
    `rate`), optionally looping."""
    process: Literal["trace"]
    file: str = "azure_conv"
    time_scale: float | None = Field(None, gt=0, allow_inf_nan=False)
    rate: Rate | None = None
    start_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    limit: PositiveInt | None = None
    loop: bool = False

    @field_validator("file")
    @classmethod
    def _readable(cls, file: str, info: ValidationInfo) -> str:
        file = resolve_data_file(file, info)
        if read_table(file).time_s is None:
            raise ValueError(f"expected a trace with a time column (TIMESTAMP or arrival_s): {file!r} has none")
        return file

    @model_validator(mode="after")
    def _usable(self) -> TraceArrival:
        if self.time_scale is not None and self.rate is not None:
            raise ValueError("rate: give time_scale or rate, not both")
        end = float(read_table(self.file).time_s[-1])
        if self.start_s > end:
            raise ValueError(f"start_s: the trace ends at {end:.3f} s, got {self.start_s}")
        if (self.rate is not None or self.loop) and len(self.segment()[0]) < 2:
            raise ValueError("limit: scaling to a rate or looping needs at least 2 trace rows")
        return self

    def segment(self) -> tuple[np.ndarray, np.ndarray]:
        """The replayed rows and their times in trace seconds since `start_s`."""
        time_s = read_table(self.file).time_s
        first = int(np.searchsorted(time_s, self.start_s, side="left"))
        rows = np.arange(first, len(time_s) if self.limit is None else min(len(time_s), first + self.limit))
        return rows, time_s[rows] - self.start_s

    def period(self, offsets: np.ndarray) -> float:
        """Trace seconds between loop passes: the segment's span plus one mean gap."""
        span = float(offsets[-1] - offsets[0])
        return span * len(offsets) / (len(offsets) - 1) if len(offsets) > 1 else 0.0

    def speedup(self) -> float:
        if self.rate is None:
            return self.time_scale or 1.0
        rows, offsets = self.segment()
        return self.rate * self.period(offsets) / len(rows)

    def times(self, rng, limit, horizon):
        rows, offsets = self.segment()
        speed = self.speedup()
        passes = 1
        if self.loop:
            period = self.period(offsets) / speed
            by_count = math.inf if limit is None else math.ceil(limit / len(rows))
            by_time = math.inf if horizon is None else math.floor(horizon / period) + 1 if period > 0 else 1
            passes = int(min(by_count, by_time))
            offsets = (np.arange(passes)[:, None] * self.period(offsets) + offsets[None, :]).ravel()
            rows = np.tile(rows, passes)
        times = offsets / speed
        keep = len(times) if horizon is None else int(np.searchsorted(times, horizon, side="left"))
        keep = keep if limit is None else min(keep, limit)
        return times[:keep], rows[:keep]


Arrival = Annotated[
    Union[PoissonArrival, GammaArrival, ConstantArrival, TraceArrival],
    Field(discriminator="process"),
]
