"""Fitting step-time noise (`cluster.hardware.noise`) to a live run's steps: each
step's measured time (its `time_s`, plus `late_s` where a paced engine started late)
over what the iteration-time model gives for its shape, per step kind; split into
bands of modelled time where the spread differs between short and long steps. And the
control path's seconds the model leaves out: hand-offs' and dispatches'.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.core.tables import STEP_SHAPE
from cluster.hardware.noise import Band, Quantiles, StepNoise

PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
MIN_STEPS = 30
MIN_BAND_STEPS = 300
BANDS = 3
SPREAD_DIFFERS = 1.5


def step_ratios(steps: pd.DataFrame, perf) -> pd.DataFrame:
    """kind, modelled_s and ratio (measured over modelled) of every step with a shape."""
    shapes = steps[list(STEP_SHAPE)].to_numpy(dtype=float)
    modelled = np.array([perf.step_time(int(p), sq, int(b), int(c)) for p, sq, b, c in shapes])
    measured = steps["time_s"].to_numpy(dtype=float)
    if "late_s" in steps:
        measured = measured + steps["late_s"].to_numpy(dtype=float)
    kind = np.where(steps["decode_batch"].to_numpy() == 0, "prefill",
                    np.where(steps["prefill_tokens"].to_numpy() == 0, "decode", "mixed"))
    keep = (modelled > 0) & (measured > 0)
    return pd.DataFrame({"kind": kind[keep], "modelled_s": modelled[keep], "ratio": measured[keep] / modelled[keep]})


def _quantiles(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(q) for q in np.maximum.accumulate(np.quantile(values, PROBABILITIES)))


def band_of(ratios: np.ndarray, up_to_s: float = np.inf) -> Band:
    """The ratios' quantiles, scaled to a mean of 1: the fit carries the steps' mean
    time, the noise only their spread around it."""
    return Band(PROBABILITIES, _quantiles(ratios / ratios.mean()), float(up_to_s))


def _spread(ratios: np.ndarray) -> float:
    low, high = np.quantile(ratios, [0.1, 0.99])
    return float(high - low)


def fit_bands(modelled: np.ndarray, ratios: np.ndarray) -> tuple[Band, ...]:
    """One band, or `BANDS` by modelled time when each has enough steps and their
    spreads (p99 - p10 of the ratio) differ by more than `SPREAD_DIFFERS` times."""
    if len(ratios) >= BANDS * MIN_BAND_STEPS:
        edges = np.quantile(modelled, np.linspace(0, 1, BANDS + 1)[1:-1])
        if np.all(np.diff(edges) > 0):
            which = np.searchsorted(edges, modelled, side="left")
            groups = [ratios[which == k] for k in range(BANDS)]
            spreads = [_spread(g) for g in groups]
            differ = max(spreads) > SPREAD_DIFFERS * max(min(spreads), 1e-9)
            if differ and all(len(g) >= MIN_BAND_STEPS for g in groups):
                return tuple(band_of(g, edges[k] if k < BANDS - 1 else np.inf) for k, g in enumerate(groups))
    return (band_of(ratios),)


def fit_seconds(values: np.ndarray | None) -> Quantiles | None:
    """The quantiles of seconds beyond a model (negatives as 0); None below `MIN_STEPS`."""
    if values is None or len(values) < MIN_STEPS:
        return None
    return Quantiles(PROBABILITIES, _quantiles(np.maximum(values, 0.0)))


def fit_noise(steps: pd.DataFrame, perf, source: str, handoff_s: np.ndarray | None = None,
              dispatch_s: np.ndarray | None = None) -> StepNoise | None:
    """The noise of `steps` around `perf`, and of the hand-offs' and dispatches' extra
    seconds; None when none has `MIN_STEPS` values."""
    table = step_ratios(steps, perf)
    bands = {}
    for kind, rows in table.groupby("kind"):
        if len(rows) >= MIN_STEPS:
            bands[str(kind)] = fit_bands(rows["modelled_s"].to_numpy(), rows["ratio"].to_numpy())
    handoff, dispatch = fit_seconds(handoff_s), fit_seconds(dispatch_s)
    return StepNoise(bands, source, handoff, dispatch) if bands or handoff or dispatch else None


def _handoff_parts(run) -> pd.DataFrame:
    """Per handed-off request: seconds from its first token to the driver seeing its
    prefill end (`report`) and its first transfer's start to end (`transfer`)."""
    events = run.events[run.events["kind"].isin(["prefill_end", "transfer_start", "transfer_end"])]
    first = events.groupby(["request_id", "kind"])["time_s"].min().unstack()
    token = run.tokens[run.tokens["index"] == 1].set_index("request_id")["time_s"]
    return pd.DataFrame({"report": first.get("prefill_end") - token.reindex(first.index),
                         "transfer": first.get("transfer_end") - first.get("transfer_start")}).dropna()


def handoff_extra_s(run) -> np.ndarray | None:
    """What each hand-off of a live run took beyond the simulator's model of it: the
    prefill's report reaching the driver, and the transfer beyond the same request's
    transfer in the run's own config simulated without noise (the pull's Ray calls).
    Waiting for decode room is left out: the simulator models it. None for a run
    without its config or without hand-offs."""
    from cluster.hardware.yamlfile import ConfigError, validate
    from experiments.config.experiment import ExperimentConfig
    from experiments.runs.runner import simulate

    data = run.meta.get("config")
    if not isinstance(data, dict):
        return None
    data = {**data, "runtime": "sim", "cluster": {**data.get("cluster", {}), "noise": False}}
    try:
        modelled = _handoff_parts(simulate(validate(data, ExperimentConfig, "run.json")))
    except (ConfigError, ValueError):
        return None
    live = _handoff_parts(run)
    both = live.index.intersection(modelled.index)
    if not len(both):
        return None
    return (live.loc[both, "report"] + live.loc[both, "transfer"] - modelled.loc[both, "transfer"]).to_numpy()


def dispatch_extra_s(run) -> np.ndarray | None:
    """Per dispatch that found its instance idle with nothing else sent there since its
    last step: seconds from the router's dispatch to the start of the instance's next
    step, a prefill (the driver's call reaching the worker). The simulator starts that
    step at the dispatch itself. None for a run without steps."""
    if run.steps is None or not len(run.steps):
        return None
    dispatches = run.events[run.events["kind"] == "dispatch"]
    gaps = []
    for instance, steps in run.steps.groupby("instance"):
        ends = steps["end_s"].to_numpy(dtype=float)
        starts = ends - steps["time_s"].to_numpy(dtype=float)
        order = np.argsort(starts, kind="stable")
        ends, starts = ends[order], starts[order]
        prefills = steps["prefill_tokens"].to_numpy()[order] > 0
        sent = np.sort(dispatches.loc[dispatches["instance"] == instance, "time_s"].to_numpy(dtype=float))
        next_step = np.searchsorted(starts, sent, side="left")
        before = np.maximum(next_step - 1, 0)
        last_end = np.where(next_step > 0, ends[before], -np.inf)
        previous = np.concatenate([[-np.inf], sent[:-1]])
        found = next_step < len(starts)
        idle = found & (last_end <= sent) & (previous <= last_end)
        idle &= prefills[np.minimum(next_step, len(starts) - 1)]
        gaps.append(starts[next_step[idle]] - sent[idle])
    return np.concatenate(gaps) if gaps else None


def describe(noise: StepNoise) -> list[str]:
    """A line per band: its steps' ratio quantiles."""
    lines = []
    for kind, bands in noise.bands.items():
        for band in bands:
            where = "" if band.up_to_s == np.inf else f" up to {band.up_to_s * 1e3:.3g} ms"
            p50, p90, p99 = (band.quantile(p) for p in (0.5, 0.9, 0.99))
            lines.append(f"noise    {kind}{where}: measured/modelled p50 {p50:.3f}, p90 {p90:.3f}, p99 {p99:.3f}, "
                         f"max {band.values[-1]:.3f}")
    if noise.handoff is not None:
        p10, p50, p90 = (noise.handoff.quantile(p) * 1e3 for p in (0.1, 0.5, 0.9))
        lines.append(f"noise    handoff: beyond the modelled transfer p10 {p10:.3g} ms, p50 {p50:.3g} ms, "
                     f"p90 {p90:.3g} ms (drawn per transfer stage)")
    if noise.dispatch is not None:
        p10, p50, p90 = (noise.dispatch.quantile(p) * 1e3 for p in (0.1, 0.5, 0.9))
        lines.append(f"noise    dispatch: to the instance's queue p10 {p10:.3g} ms, p50 {p50:.3g} ms, "
                     f"p90 {p90:.3g} ms (drawn per dispatch)")
    return lines
