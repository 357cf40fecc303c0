"""`pdlab calibrate PROFILE.csv`: fit the iteration-time model to measured iterations
(`pdlab calibrate --engine vllm --model-path DIR` measures them first on a real engine;
`pdlab calibrate RUN` takes those a live run's engines took, from its steps table,
and fits their spread around the model too: `experiments/calibration/noise.py`).

One CSV row per iteration: prefill_tokens, prefill_tokens_sq (optional, default
prefill_tokens^2), decode_batch, decode_context, time_s. Prefill coefficients come
from rows without decodes, decode coefficients from rows without prefill, each by
non-negative least squares on relative error; mixed rows are only checked.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.core.tables import STEP_SHAPE
from cluster.hardware.perfmodel import IterationModel
from experiments.calibration.noise import describe, dispatch_extra_s, fit_noise, handoff_extra_s
from experiments.runs.runformat import RunFormatError, read_run

COUNTS = ("prefill_tokens", "decode_batch", "decode_context")
REQUIRED = (*COUNTS, "time_s")
SIDES = {"prefill": STEP_SHAPE[:2], "decode": STEP_SHAPE[2:]}


class CalibrationError(ValueError):
    """A profile that cannot be read or fitted."""


@dataclass(frozen=True)
class SideFit:
    coefficients: tuple[float, float, float]
    rows: int
    mean_error: float
    max_error: float


@dataclass(frozen=True)
class Calibration:
    perf: IterationModel
    prefill: SideFit
    decode: SideFit
    mixed_rows: int
    mixed_errors: tuple[float, float] | None
    handoff: tuple[float, int] | None = None


def _show(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _where(path: Path, row: int, column: str) -> str:
    return f"{path}, row {row + 1} (line {row + 2}), column {column!r}"


def _column(path: Path, table: pd.DataFrame, name: str, whole: bool) -> np.ndarray:
    raw = table[name]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        got = "an empty cell" if pd.isna(raw.iloc[row]) else _show(raw.iloc[row])
        raise CalibrationError(f"{_where(path, row, name)}: expected a number, got {got}")
    wrong = (values <= 0) if name == "time_s" else (values < 0)
    if whole:
        wrong |= values != np.round(values)
    if wrong.any():
        row = int(np.argmax(wrong))
        need = "a number of seconds > 0" if name == "time_s" else "a whole number >= 0" if whole else "a number >= 0"
        raise CalibrationError(f"{_where(path, row, name)}: expected {need}, got {_show(raw.iloc[row])}")
    return values


def read_live_run(path: Path):
    """A live run folder, which must have a steps table."""
    try:
        run = read_run(path)
    except RunFormatError as exc:
        raise CalibrationError(str(exc)) from None
    if run.steps is None:
        raise CalibrationError(f"{path}: no steps table (live runs record their engines' steps; "
                               "a simulated run has none)")
    return run


def read_profile(path: str | Path) -> pd.DataFrame:
    """The profile as float columns, checked; prefill_tokens_sq filled with prefill_tokens^2 where absent."""
    path = Path(path)
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise CalibrationError(f"{path}: empty file (expected a header with {list(REQUIRED)} and rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise CalibrationError(f"{path}: not a readable CSV: {' '.join(str(exc).split())}") from None
    table.columns = [str(c).strip() for c in table.columns]
    for name in REQUIRED:
        if name not in table.columns:
            raise CalibrationError(f"{path}: missing column {name!r} (the file has {list(table.columns)})")
    profile = pd.DataFrame({name: _column(path, table, name, whole=name in COUNTS) for name in REQUIRED})
    square = profile["prefill_tokens"] ** 2
    if "prefill_tokens_sq" in table.columns:
        given = table["prefill_tokens_sq"]
        filled = given.where(given.notna(), square)
        profile["prefill_tokens_sq"] = _column(path, pd.DataFrame({"prefill_tokens_sq": filled}),
                                               "prefill_tokens_sq", whole=False)
    else:
        profile["prefill_tokens_sq"] = square
    empty = ((profile["prefill_tokens"] == 0) & (profile["decode_batch"] == 0)).to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise CalibrationError(f"{_where(path, row, 'prefill_tokens')}: an empty iteration "
                               "(prefill_tokens and decode_batch both 0)")
    return profile


FLOOR_REPEATS = 3


def floor_s(times: np.ndarray) -> float:
    """The shortest step time when `FLOOR_REPEATS` or more steps took it to within 1e-6
    (an engine's floor, as an emulated roofline's `min_step`: measured times never
    repeat so exactly), else 0."""
    if not len(times):
        return 0.0
    shortest = float(times.min())
    return shortest if int(np.sum(times <= shortest * (1 + 1e-6))) >= FLOOR_REPEATS else 0.0


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min |x c - y| with c >= 0, exactly, by trying every support (fine for a few columns)."""
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    best, best_residual = np.zeros(x.shape[1]), float(y @ y)
    for size in range(1, x.shape[1] + 1):
        for support in combinations(range(x.shape[1]), size):
            solution = np.linalg.lstsq(xs[:, support], y, rcond=None)[0]
            if (solution < 0).any() or not np.isfinite(solution).all():
                continue
            residual = xs[:, support] @ solution - y
            if residual @ residual < best_residual:
                best_residual = float(residual @ residual)
                best = np.zeros(x.shape[1])
                best[list(support)] = solution
    return best / scale


def _errors(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    relative = np.abs(predicted - measured) / measured
    return float(relative.mean()), float(relative.max())


def fit_side(path: Path, profile: pd.DataFrame, side: str, relative: bool = True) -> SideFit:
    first, second = SIDES[side]
    rows = profile[(profile["decode_batch"] == 0) if side == "prefill" else (profile["prefill_tokens"] == 0)]
    x = np.column_stack([np.ones(len(rows)), rows[first].to_numpy(), rows[second].to_numpy()])
    y = rows["time_s"].to_numpy()
    rank = np.linalg.matrix_rank(x / np.maximum(np.linalg.norm(x, axis=0), 1e-300)) if len(rows) else 0
    if rank < 3:
        only = "decode_batch == 0" if side == "prefill" else "prefill_tokens == 0"
        raise CalibrationError(f"{path}: too few {side} rows to fit 3 coefficients: need rows with {only} where "
                               f"{first} and {second} vary independently (3 or more), got {len(rows)} rows of rank {rank}")
    coefficients = nonnegative_lstsq(x / y[:, None], np.ones(len(y))) if relative else nonnegative_lstsq(x, y)
    return SideFit(tuple(float(c) for c in coefficients), len(rows), *_errors(x @ coefficients, y))


def calibrate(path: str | Path) -> Calibration:
    """Fit a profile CSV (each row a shape's median: relative errors count), or the steps
    of a live run folder (many noisy rows: absolute errors count, so the fit predicts
    the time the engines spent) with the overhead of its handoffs."""
    path = Path(path)
    run = read_live_run(path) if path.is_dir() else None
    profile = read_profile(path) if run is None else \
        run.steps[run.steps["time_s"] > 0][[*STEP_SHAPE, "time_s"]].astype(float).reset_index(drop=True)
    relative = run is None
    prefill, decode = fit_side(path, profile, "prefill", relative), fit_side(path, profile, "decode", relative)
    perf = IterationModel(prefill.coefficients, decode.coefficients,
                          source=f"calibrated from {path.name if run is None else f'the steps of live run {path}'} "
                                 f"on {date.today().isoformat()}", min_step=floor_s(profile["time_s"].to_numpy()))
    mixed = profile[(profile["prefill_tokens"] > 0) & (profile["decode_batch"] > 0)]
    errors = None
    if len(mixed):
        predicted = np.array([perf.step_time(*row) for row in mixed[list(STEP_SHAPE)].to_numpy()])
        errors = _errors(predicted, mixed["time_s"].to_numpy())
    handoff = None
    if run is not None:
        steps, extra, sent = run.steps[run.steps["time_s"] > 0], handoff_extra_s(run), dispatch_extra_s(run)
        source = (f"residuals of {len(steps)} steps, {0 if extra is None else len(extra)} hand-offs and "
                  f"{0 if sent is None else len(sent)} dispatches of live run {path.name}")
        perf = replace(perf, noise=fit_noise(steps, perf, source, extra, sent))
        handoff = None if extra is None or not len(extra) else (float(np.median(extra)), len(extra))
    return Calibration(perf, prefill, decode, len(mixed), errors, handoff)


def _line(side: str, fit: SideFit, units: tuple[str, str]) -> str:
    a, b, c = (v * 1e3 for v in fit.coefficients)
    return (f"{side:8s} a = {a:.4g} ms, b = {b:.4g} ms/{units[0]}, c = {c:.4g} ms/{units[1]}   "
            f"({fit.rows} rows; error mean {fit.mean_error:.2%}, max {fit.max_error:.2%})")


def report(result: Calibration) -> str:
    lines = [_line("prefill", result.prefill, ("token", "token^2")),
             _line("decode", result.decode, ("sequence", "context token"))]
    if result.mixed_errors is not None:
        mean, worst = result.mixed_errors
        lines.append(f"mixed    {result.mixed_rows} rows not fitted; step_time error mean {mean:.2%}, max {worst:.2%}")
    if result.perf.min_step > 0:
        lines.append(f"floor    {result.perf.min_step * 1e3:.4g} ms: {FLOOR_REPEATS} or more steps took exactly this "
                     f"shortest time (min_step)")
    if result.handoff is not None:
        seconds, count = result.handoff
        lines.append(f"handoff  {seconds * 1e3:.4g} ms beyond the simulator's model of it, median of {count} "
                     f"hand-offs (the fit's noise.handoff, drawn per transfer stage)")
    if result.perf.noise is not None:
        lines += describe(result.perf.noise)
    return "\n".join(lines)
