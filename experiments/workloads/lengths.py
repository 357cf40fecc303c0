"""Request lengths: how many prompt tokens a request has and how many output tokens
it is planned to generate (fixed, uniform, lognormal, sampled from a shipped
dataset, the seed paper's concatenated long prompts, or the replayed trace's own
rows), and the data files those come from (`configs/traces/`, docs/workloads.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from cluster.hardware.yamlfile import Strict

TRACES_DIR = Path(__file__).resolve().parents[2] / "configs" / "traces"
DATASETS = {
    "sharegpt": "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "arxiv": "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
    "bwb": "bwb_stats_llama2_tokenizer_filtered_v2.csv",
    "azure_conv": "AzureLLMInferenceTrace_conv.csv",
}
PROMPT_COLUMNS = ("num_prefill_tokens", "ContextTokens", "prompt_tokens")
OUTPUT_COLUMNS = ("num_decode_tokens", "GeneratedTokens", "output_tokens")
TIME_COLUMNS = ("TIMESTAMP", "arrival_s")
LARGEST_LENGTH = 2**31


@dataclass(frozen=True)
class Table:
    """One data file's columns, rows in time order when it has a time column."""
    path: str
    prompt: np.ndarray | None
    output: np.ndarray | None
    time_s: np.ndarray | None


def data_path(name: str) -> Path:
    return TRACES_DIR / DATASETS[name] if name in DATASETS else Path(name)


def resolve_data_file(value: str, info: ValidationInfo) -> str:
    """A shipped dataset name stays a name; a path becomes absolute, relative paths
    taken from the validation context's `base_dir` (else the working directory)."""
    if value in DATASETS:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.is_file():
        raise ValueError(f"expected one of {sorted(DATASETS)} or a path to a CSV file, got {value!r} "
                         f"(no file {str(path)!r})")
    return str(path.resolve())


def read_table(name: str) -> Table:
    path = data_path(name)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror}") from None
    return _read_table(str(path), stamp)


def _pick(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in df.columns), None)


def _counts(path: str, df: pd.DataFrame, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{path} row {row + 1}, column {column!r}: expected a whole number >= 0, "
                         f"got {df[column].iloc[row]!r}")
    return np.maximum(values.astype(np.int64), 1)


def _seconds(path: str, df: pd.DataFrame, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    raw = df[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    if pd.api.types.is_numeric_dtype(raw) or numbers.notna().any():
        values = numbers.to_numpy(dtype=np.float64)
    else:
        stamps = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        values = np.where(stamps.isna(), np.nan, (stamps - stamps.min()).dt.total_seconds().to_numpy())
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{path} row {row + 1}, column {column!r}: expected a time (seconds or an "
                         f"ISO date-time), got {raw.iloc[row]!r}")
    return values - values.min()


@lru_cache(maxsize=16)
def _read_table(path: str, stamp: int) -> Table:
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as CSV: {exc}") from None
    if df.empty:
        raise ValueError(f"{path}: has no rows")
    time_s = _seconds(path, df, _pick(df, TIME_COLUMNS))
    prompt = _counts(path, df, _pick(df, PROMPT_COLUMNS))
    output = _counts(path, df, _pick(df, OUTPUT_COLUMNS))
    if time_s is not None and (np.diff(time_s) < 0).any():
        order = np.argsort(time_s, kind="stable")
        time_s, prompt, output = (None if a is None else a[order] for a in (time_s, prompt, output))
    for array in (time_s, prompt, output):
        if array is not None:
            array.setflags(write=False)
    return Table(path, prompt, output, time_s)


def length_table(name: str) -> Table:
    table = read_table(name)
    if table.prompt is None or table.output is None:
        raise ValueError(f"expected a CSV with a prompt column (one of {list(PROMPT_COLUMNS)}) and an output "
                         f"column (one of {list(OUTPUT_COLUMNS)}); {table.path} has neither or only one")
    return table


def readable_table(value: str, info: ValidationInfo) -> str:
    """A shipped data set's name or a CSV path, resolved and read once to check it."""
    value = resolve_data_file(value, info)
    length_table(value)
    return value


class LengthsBase(Strict):
    """Clipping shared by every distribution: to a model's context, say."""
    max_prompt: PositiveInt | None = None
    max_output: PositiveInt | None = None
    max_total: int | None = Field(None, ge=2)

    def clip(self, prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prompt = np.clip(prompt, 1, min(self.max_prompt or LARGEST_LENGTH, (self.max_total or LARGEST_LENGTH) - 1))
        output = np.clip(output, 1, self.max_output or LARGEST_LENGTH)
        if self.max_total is not None:
            output = np.minimum(output, self.max_total - prompt)
        return prompt.astype(np.int64, copy=False), output.astype(np.int64, copy=False)


class FixedLengths(LengthsBase):
    dist: Literal["fixed"]
    prompt: PositiveInt
    output: PositiveInt

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.full(count, self.prompt, np.int64), np.full(count, self.output, np.int64)


class UniformLengths(LengthsBase):
    """Whole numbers uniform on [low, high], both ends included."""
    dist: Literal["uniform"]
    prompt: tuple[PositiveInt, PositiveInt]
    output: tuple[PositiveInt, PositiveInt]

    @field_validator("prompt", "output")
    @classmethod
    def _ordered(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        if bounds[0] > bounds[1]:
            raise ValueError(f"expected [low, high] with low <= high, got {list(bounds)}")
        return bounds

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        low = np.array([self.prompt[0], self.output[0]])
        high = np.array([self.prompt[1], self.output[1]]) + 1
        pairs = rng.integers(low, high, size=(count, 2))
        return pairs[:, 0], pairs[:, 1]


class Lognormal(Strict):
    """A lognormal length given by its mean and coefficient of variation (std / mean)."""
    mean: float = Field(gt=0, allow_inf_nan=False)
    cv: float = Field(ge=0, allow_inf_nan=False)

    def transform(self, normal: np.ndarray) -> np.ndarray:
        sigma = math.sqrt(math.log1p(self.cv**2))
        mu = math.log(self.mean) - sigma**2 / 2
        values = np.exp(np.minimum(mu + sigma * normal, math.log(LARGEST_LENGTH)))
        return np.maximum(np.rint(values), 1).astype(np.int64)


class LognormalLengths(LengthsBase):
    dist: Literal["lognormal"]
    prompt: Lognormal
    output: Lognormal

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        normal = rng.standard_normal((count, 2))
        return self.prompt.transform(normal[:, 0]), self.output.transform(normal[:, 1])


class DatasetLengths(LengthsBase):
    """(prompt, output) pairs drawn jointly, with replacement, from one file's rows."""
    dist: Literal["dataset"]
    name: str

    @field_validator("name")
    @classmethod
    def _readable(cls, name: str, info: ValidationInfo) -> str:
        return readable_table(name, info)

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        table = length_table(self.name)
        rows = rng.integers(0, len(table.prompt), count)
        return table.prompt[rows], table.output[rows]


class ConcatLongLengths(LengthsBase):
    """Long prompts as in the seed paper: prompts of `source` shorter than `target`
    are concatenated until the sum is nearest `target` (so the mean is about it);
    each output is the output of one more row of `source`, drawn on its own."""
    dist: Literal["concat_long"]
    target: PositiveInt = 1600
    source: str = "sharegpt"

    @field_validator("source")
    @classmethod
    def _readable(cls, source: str, info: ValidationInfo) -> str:
        return readable_table(source, info)

    @model_validator(mode="after")
    def _has_short_prompts(self) -> ConcatLongLengths:
        if not (length_table(self.source).prompt < self.target).any():
            raise ValueError(f"target: no prompt of {self.source} is shorter than {self.target} tokens")
        return self

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        table = length_table(self.source)
        pool = table.prompt[table.prompt < self.target]
        pieces = math.ceil(3 * self.target / pool.mean()) + 8
        high = np.array([len(table.output)] + [len(pool)] * pieces)
        chunk = max(1, 2**20 // (pieces + 1))
        prompts, outputs = [], []
        for start in range(0, count, chunk):
            rows = rng.integers(0, high, size=(min(chunk, count - start), pieces + 1))
            outputs.append(table.output[rows[:, 0]])
            prompts.append(self._nearest_sum(pool[rows[:, 1:]]))
        if not prompts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(prompts), np.concatenate(outputs)

    def _nearest_sum(self, pieces: np.ndarray) -> np.ndarray:
        sums = np.cumsum(pieces, axis=1)
        reached = sums >= self.target
        last = np.where(reached.any(axis=1), reached.argmax(axis=1), sums.shape[1] - 1)
        above = np.take_along_axis(sums, last[:, None], axis=1)[:, 0]
        below = np.where(last > 0, np.take_along_axis(sums, np.maximum(last - 1, 0)[:, None], axis=1)[:, 0], 0)
        use_below = (last > 0) & (self.target - below < above - self.target)
        return np.where(use_below, below, above)


class SameTraceLengths(LengthsBase):
    """The lengths of the trace rows that the tenant's `trace` arrival replays."""
    dist: Literal["same_trace"]

    def take(self, trace_file: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = length_table(trace_file)
        return table.prompt[rows], table.output[rows]


Lengths = Annotated[
    Union[FixedLengths, UniformLengths, LognormalLengths, DatasetLengths, ConcatLongLengths, SameTraceLengths],
    Field(discriminator="dist"),
]
