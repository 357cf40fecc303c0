"""The run format: one folder per run with the `requests`, `tokens` and `events`
tables, a live run's `steps`, and `run.json` (docs/run-format.md). Written as Parquet, read from Parquet
or CSV, validated on both paths with errors that name the table, row and column.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.core.tables import EVENT_COLUMNS, REQUEST_COLUMNS, STATUSES, STEP_COLUMNS, TOKEN_COLUMNS

TABLES = ("requests", "tokens", "events")


class RunFormatError(ValueError):
    """A run folder or table that does not follow the run format."""


@dataclass
class Run:
    requests: pd.DataFrame
    tokens: pd.DataFrame
    events: pd.DataFrame = field(default_factory=lambda: empty_events())
    meta: dict = field(default_factory=dict)
    steps: pd.DataFrame | None = None

    @property
    def end_s(self) -> float | None:
        end = self.meta.get("end_s")
        return None if end is None else float(end)


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({"time_s": pd.Series(dtype="float64"), "kind": pd.Series(dtype="str"),
                         "request_id": pd.Series(dtype="object")})


def _py(value):
    return value.item() if isinstance(value, np.generic) else value


def _fail(table: str, row: int | None, column: str, message: str) -> RunFormatError:
    where = f"{table}" + (f" row {row + 1}" if row is not None else "") + f", column {column!r}"
    return RunFormatError(f"{where}: {message}")


def _numbers(table: str, column: str, values: pd.Series, whole: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) or not (pd.api.types.is_numeric_dtype(values)
                                                  or pd.api.types.is_object_dtype(values)
                                                  or pd.api.types.is_string_dtype(values)):
        raise _fail(table, 0, column, f"expected a number, got {_py(values.iloc[0])!r} ({values.dtype})")
    if not pd.api.types.is_numeric_dtype(values):
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise _fail(table, row, column, f"expected a number, got {_py(values.iloc[row])!r}")
        values = numeric
    array = values.to_numpy()
    if pd.api.types.is_float_dtype(array) and not np.isfinite(array).all():
        row = int(np.argmax(~np.isfinite(array)))
        raise _fail(table, row, column, f"expected a finite number, got {_py(array[row])!r}")
    if not whole:
        return values if array.dtype == np.float64 else values.astype(np.float64)
    wrong = array < 0
    if pd.api.types.is_float_dtype(array):
        wrong |= array != np.round(array)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise _fail(table, row, column, f"expected a whole number >= 0, got {_py(array[row])!r}")
    return values if array.dtype == np.int64 else values.astype(np.int64)


def _check_column(table: str, df: pd.DataFrame, column: str, kind: str) -> pd.Series:
    if column not in df.columns:
        raise _fail(table, None, column, f"missing (the table has {list(df.columns)})")
    values = df[column]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    missing = values.isna().to_numpy()
    if missing.any() and not optional:
        raise _fail(table, int(np.argmax(missing)), column, "missing value (NaN or empty)")
    if kind in ("float", "int"):
        return _numbers(table, column, values, whole=kind == "int")
    if kind == "status":
        bad = ~values.isin(STATUSES).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise _fail(table, row, column, f"expected one of {list(STATUSES)}, got {_py(values.iloc[row])!r}")
        return values.astype(str)
    if kind == "id" and pd.api.types.is_float_dtype(values):
        array = values.to_numpy()
        whole = np.isnan(array) | (np.isfinite(array) & (array == np.round(array)))
        if not whole.all():
            row = int(np.argmax(~whole))
            raise _fail(table, row, column, f"expected an integer or string id, got {_py(array[row])!r}")
        return values.astype("Int64") if optional else values.astype(np.int64)
    return values


def _normalise(table: str, df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    for name, kind in columns.items():
        checked = _check_column(table, df, name, kind)
        if checked is not df[name]:
            df[name] = checked
    return df


def _same_id_type(ids: pd.Series, other: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(ids) and not pd.api.types.is_integer_dtype(other):
        return other.astype(str)
    if not pd.api.types.is_integer_dtype(ids):
        return other.astype(str)
    return other


def validate(run: Run) -> Run:
    """Check every table; return the run with normalised dtypes, requests in
    (arrival, id) order and tokens in that order then by index."""
    requests = _normalise("requests", run.requests, REQUEST_COLUMNS)
    tokens = _normalise("tokens", run.tokens, TOKEN_COLUMNS)
    events = _normalise("events", run.events, EVENT_COLUMNS)
    if not pd.api.types.is_integer_dtype(requests["request_id"]):
        requests["request_id"] = requests["request_id"].astype(str)
    tokens["request_id"] = _same_id_type(requests["request_id"], tokens["request_id"])
    duplicated = requests["request_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        raise _fail("requests", row, "request_id", f"duplicate id {_py(requests['request_id'].iloc[row])!r}")
    arrival = requests["arrival_s"].to_numpy()
    if len(arrival) and arrival.min() < 0:
        row = int(np.argmin(arrival))
        raise _fail("requests", row, "arrival_s", f"expected seconds >= 0, got {_py(arrival[row])!r}")
    if len(arrival) > 1 and not (np.diff(arrival) > 0).all():
        requests = requests.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)
    given, (tokens, _) = tokens, _sorted_tokens(requests, tokens)
    meta = dict(run.meta)
    end = meta.get("end_s")
    if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float)) or not np.isfinite(end)):
        raise RunFormatError(f"run.json, key 'end_s': expected a finite number of seconds, got {_py(end)!r}")
    if end is not None and len(given) and given["time_s"].max() > end:
        row = int(given["time_s"].to_numpy().argmax())
        raise RunFormatError(f"run.json, key 'end_s': the run ends at {_py(end)!r} s but tokens row {row + 1} (request "
                             f"{_py(given['request_id'].iloc[row])!r}) came at {_py(given['time_s'].iloc[row])!r} s; "
                             "expected end_s at or after the last token")
    steps = None if run.steps is None else _normalise("steps", run.steps, STEP_COLUMNS)
    return Run(requests, tokens, events, meta, steps)


def _positions(requests: pd.DataFrame, tokens: pd.DataFrame) -> np.ndarray:
    ids, wanted = requests["request_id"], tokens["request_id"]
    if pd.api.types.is_integer_dtype(ids) and len(ids) and pd.api.types.is_integer_dtype(wanted):
        first = int(ids.iloc[0])
        if (ids.to_numpy() == np.arange(first, first + len(ids))).all():
            position = wanted.to_numpy() - first
            position[(position < 0) | (position >= len(ids))] = -1
            return position
    return pd.Index(ids).get_indexer(wanted)


def _sorted_tokens(requests: pd.DataFrame, tokens: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Tokens in requests order then index order, checked; with each one's request position."""
    position = _positions(requests, tokens)
    if (position < 0).any():
        row = int(np.argmax(position < 0))
        raise _fail("tokens", row, "request_id", f"id {_py(tokens['request_id'].iloc[row])!r} is not in requests")
    index = tokens["index"].to_numpy()
    in_order = len(index) < 2 or bool(np.all((position[1:] > position[:-1])
                                             | ((position[1:] == position[:-1]) & (index[1:] > index[:-1]))))
    order = np.arange(len(index)) if in_order else np.lexsort((index, position))
    pos, idx = (position, index) if in_order else (position[order], index[order])
    counts = np.bincount(pos, minlength=len(requests))
    starts = np.cumsum(counts) - counts
    expected = np.arange(len(idx)) - np.repeat(starts, counts) + 1
    wrong = idx != expected
    if wrong.any():
        k = int(np.argmax(wrong))
        row, rid = int(order[k]), requests["request_id"].iloc[pos[k]]
        problem = "duplicate" if k > 0 and pos[k - 1] == pos[k] and idx[k - 1] == idx[k] else "out of sequence"
        raise _fail("tokens", row, "index", f"{problem} index {_py(idx[k])} for request {_py(rid)!r}: "
                    f"expected indices 1..n with none missing, next expected {_py(expected[k])}")
    output = requests["output_tokens"].to_numpy()
    mismatch = output != counts
    if mismatch.any():
        row = int(np.argmax(mismatch))
        raise _fail("requests", row, "output_tokens", f"says {_py(output[row])} but tokens has {_py(counts[row])} rows "
                    f"for request {_py(requests['request_id'].iloc[row])!r}")
    sorted_tokens = tokens if in_order else tokens.iloc[order].reset_index(drop=True)
    times = sorted_tokens["time_s"].to_numpy()
    early = times < requests["arrival_s"].to_numpy()[pos]
    if early.any():
        k = int(np.argmax(early))
        raise _fail("tokens", int(order[k]), "time_s", f"token at {_py(times[k])!r} s is before its request "
                    f"{_py(requests['request_id'].iloc[pos[k]])!r} arrived")
    backwards = (np.diff(times) < 0) & (pos[1:] == pos[:-1])
    if backwards.any():
        k = int(np.argmax(backwards)) + 1
        raise _fail("tokens", int(order[k]), "time_s", f"token {_py(idx[k])} of request "
                    f"{_py(requests['request_id'].iloc[pos[k]])!r} is received before token {_py(idx[k] - 1)}")
    return sorted_tokens, pos


def _read_table(folder: Path, name: str, required: bool) -> pd.DataFrame | None:
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = folder / f"{name}{suffix}"
        if path.exists():
            try:
                return reader(path)
            except Exception as exc:
                raise RunFormatError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    if required:
        raise RunFormatError(f"{folder}: no {name}.parquet or {name}.csv")
    return None


def read_run(path: str | os.PathLike) -> Run:
    folder = Path(path)
    if not folder.is_dir():
        raise RunFormatError(f"{folder}: not a run folder (expected a directory with requests and tokens tables)")
    meta = {}
    meta_path = folder / "run.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunFormatError(f"{meta_path}: not valid JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise RunFormatError(f"{meta_path}: expected a JSON object")
    requests = _read_table(folder, "requests", required=True)
    tokens = _read_table(folder, "tokens", required=True)
    events = _read_table(folder, "events", required=False)
    steps = _read_table(folder, "steps", required=False)
    return validate(Run(requests, tokens, empty_events() if events is None else events, meta, steps))


@contextmanager
def _staged(path: str | os.PathLike, meta: dict):
    """A staging folder beside `path`, renamed into place (with run.json) only if the
    block succeeds: a failure leaves no half-written run."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        (staging / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_run(run: Run, path: str | os.PathLike) -> Path:
    """Validate, then write all tables."""
    run = validate(run)
    with _staged(path, run.meta) as staging:
        for name in TABLES:
            getattr(run, name).to_parquet(staging / f"{name}.parquet", index=False)
        if run.steps is not None:
            run.steps.to_parquet(staging / "steps.parquet", index=False)
    return Path(path)


def write_run_chunked(run: Run, chunks, path: str | os.PathLike) -> Path:
    """`write_run` for a run too large to hold its tokens table at once: `run.tokens` is
    ignored and the tokens come from `chunks`, (first, last, frame) per range of
    requests in `run.requests` order, each validated with its requests."""
    head = validate(Run(run.requests.iloc[:0], run.tokens.iloc[:0], run.events, run.meta, run.steps))
    with _staged(path, run.meta) as staging:
        writer = None
        for first, last, frame in chunks:
            checked = validate(Run(run.requests.iloc[first:last], frame, meta=run.meta)).tokens
            table = pa.Table.from_pandas(checked, preserve_index=False)
            writer = writer or pq.ParquetWriter(staging / "tokens.parquet", table.schema)
            writer.write_table(table)
        if writer is None:
            head.tokens.to_parquet(staging / "tokens.parquet", index=False)
        else:
            writer.close()
        run.requests.to_parquet(staging / "requests.parquet", index=False)
        head.events.to_parquet(staging / "events.parquet", index=False)
        if head.steps is not None:
            head.steps.to_parquet(staging / "steps.parquet", index=False)
    return Path(path)
