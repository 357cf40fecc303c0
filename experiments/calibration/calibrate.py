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
from experiments.calibration.noise import describe, fit_noise
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


def handoff_overhead_s(run) -> tuple[float, int] | None:
    """What a P->D handoff adds beyond a decode step, median over a live run's handed-off
    requests: from the first token (the prefill's) to the second (the decode worker's),
    less the run's median decode step; and how many handoffs it is taken over."""
    handed = run.events.loc[run.events["kind"] == "transfer_end", "request_id"].unique()
    tokens = run.tokens[run.tokens["request_id"].isin(handed) & run.tokens["index"].isin([1, 2])]
    times = tokens.pivot(index="request_id", columns="index", values="time_s").dropna()
    decode = run.steps.loc[run.steps["decode_batch"] > 0, "time_s"]
    if times.empty or decode.empty:
        return None
    return max(0.0, float(np.median(times[2] - times[1]) - decode.median())), len(times)


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
                                 f"on {date.today().isoformat()}")
    mixed = profile[(profile["prefill_tokens"] > 0) & (profile["decode_batch"] > 0)]
    errors = None
    if len(mixed):
        predicted = np.array([perf.step_time(*row) for row in mixed[list(STEP_SHAPE)].to_numpy()])
        errors = _errors(predicted, mixed["time_s"].to_numpy())
    if run is not None:
        steps = run.steps[run.steps["time_s"] > 0]
        perf = replace(perf, noise=fit_noise(steps, perf, f"residuals of {len(steps)} steps of live run {path.name}"))
    return Calibration(perf, prefill, decode, len(mixed), errors, None if run is None else handoff_overhead_s(run))


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
    if result.handoff is not None:
        seconds, count = result.handoff
        lines.append(f"handoff  {seconds * 1e3:.4g} ms beyond a decode step, median of {count} handoffs "
                     f"(the simulator's migration.stage_overhead_s)")
    if result.perf.noise is not None:
        lines += describe(result.perf.noise)
    return "\n".join(lines)
