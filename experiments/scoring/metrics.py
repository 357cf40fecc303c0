"""Metrics over a run: the per-request table and the run summary (metrics.md).

Every metric, report and plot of the project is computed from a `Run` by this
module, so that simulated, live and imported runs are scored alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cluster.core.tables import FINISHED
from experiments.runs.runformat import Run
from experiments.scoring.peers import andes_qoe, fluidity_index
from router.slo import SCHEMES, SLO, benefit, check_slo
from router.timelines import Timelines, idle_latency, meets, tpot

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Window:
    """Requests arriving in the first `warmup_s` or the last `cooldown_s` seconds are left out."""
    warmup_s: float = 0.0
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("warmup_s", "cooldown_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")


def run_slos(meta: dict, overrides: dict | None = None) -> tuple[SLO, dict[str, SLO]]:
    """The SLO a run is scored with (run.json `slo`) and each tenant's (`tenant_slo`),
    with `overrides` (SLO field -> value) over both."""
    given = dict(meta.get("slo") or {})
    try:
        check_slo(given)
    except ValueError as exc:
        raise ValueError(f"run.json, slo.{exc}") from None
    overrides = overrides or {}
    tenants = {tenant: SLO(**{**values, **overrides}) for tenant, values in (meta.get("tenant_slo") or {}).items()}
    return SLO(**{**given, **overrides}), tenants


def run_end(run: Run) -> float:
    """`end_s` from run.json, else the last token or arrival, whichever is later."""
    if run.end_s is not None:
        return run.end_s
    last = [float(t[c].max()) for t, c in ((run.tokens, "time_s"), (run.requests, "arrival_s")) if len(t)]
    return max(last, default=0.0)


def timelines(requests: pd.DataFrame, tokens: pd.DataFrame) -> Timelines:
    """Token times relative to arrival; tokens must be in requests order (as `read_run` leaves them)."""
    counts = requests["output_tokens"].to_numpy(dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrival = np.repeat(requests["arrival_s"].to_numpy(dtype=np.float64), counts)
    return Timelines(offsets, tokens["time_s"].to_numpy(dtype=np.float64) - arrival)


def _windowed(run: Run, window: Window) -> tuple[pd.DataFrame, pd.DataFrame]:
    requests = run.requests
    if not len(requests) or (window.warmup_s == 0 and window.cooldown_s == 0):
        return requests, run.tokens
    arrival = requests["arrival_s"].to_numpy()
    keep = (arrival >= arrival.min() + window.warmup_s) & (arrival <= run_end(run) - window.cooldown_s)
    token_keep = np.repeat(keep, requests["output_tokens"].to_numpy())
    return requests[keep].reset_index(drop=True), run.tokens[token_keep].reset_index(drop=True)


def _slo_columns(tl: Timelines, slo: SLO, finished: np.ndarray, waited: np.ndarray) -> dict[str, np.ndarray]:
    idle = idle_latency(tl, slo.v, finished, waited)
    status = meets(tl, slo, finished)
    return {
        "idle_latency_s": idle,
        "benefit": benefit(tl.counts, idle, finished, slo),
        "meets_slo": status["ttft_tbt"],
        **{f"meets_{scheme}": status[scheme] for scheme in SCHEMES if scheme != "ttft_tbt"},
        "fluidity_index": fluidity_index(tl, slo.ttft, slo.tbt, finished, waited),
        "andes_qoe": andes_qoe(tl, slo.ttft, 1.0 / slo.v, finished, waited),
    }


def per_request(requests: pd.DataFrame, tl: Timelines, slo: SLO, end_s: float,
                tenant_slos: dict[str, SLO] | None = None) -> pd.DataFrame:
    """One row per request; a tenant named in `tenant_slos` is scored with its own SLO."""
    finished = (requests["status"] == FINISHED).to_numpy()
    waited = end_s - requests["arrival_s"].to_numpy(dtype=np.float64)
    table = pd.DataFrame({
        "request_id": requests["request_id"],
        "arrival_s": requests["arrival_s"],
        "prompt_tokens": requests["prompt_tokens"],
        "output_tokens": tl.counts,
        "status": requests["status"],
        "finished": finished,
        "ttft_s": tl.first(),
        "tpot_s": tpot(tl),
        "e2e_s": np.where(finished, tl.last(), np.nan),
        "max_tbt_s": tl.max_gap(),
        **_slo_columns(tl, slo, finished, waited),
    })
    if tenant_slos and "tenant" in requests.columns:
        tenants = requests["tenant"].to_numpy()
        for tenant, own in tenant_slos.items():
            mask = tenants == tenant
            if own != slo and mask.any():
                for column, values in _slo_columns(tl.subset(mask), own, finished[mask], waited[mask]).items():
                    table.loc[mask, column] = values
    extra = [c for c in requests.columns if c not in table.columns]
    for column in extra:
        table[column] = requests[column].to_numpy()
    return table


def distribution(values: np.ndarray) -> dict:
    """Mean and numpy-linear percentiles; None where there is no value."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return {"count": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}}
    points = np.percentile(values, PERCENTILES, method="linear")
    return {"count": int(len(values)), "mean": float(values.mean()),
            **{f"p{p}": float(x) for p, x in zip(PERCENTILES, points)}}


def _schemes(table: pd.DataFrame, per_s) -> dict:
    n = table["output_tokens"].to_numpy()
    schemes = {}
    for scheme in SCHEMES:
        met = table["meets_slo" if scheme == "ttft_tbt" else f"meets_{scheme}"].to_numpy()
        schemes[scheme] = {
            "slo_attainment": float(met.mean()) if len(table) else None,
            "token_goodput": per_s(n[met].sum()),
            "request_goodput": per_s(met.sum()),
        }
    return schemes


def _tenants(table: pd.DataFrame, per_s) -> dict:
    return {str(tenant): {"requests": int(len(part)), "smooth_goodput": per_s(part["benefit"].sum()),
                          "total_benefit": float(part["benefit"].sum()), "schemes": _schemes(part, per_s),
                          "idle_latency_s": distribution(part["idle_latency_s"])}
            for tenant, part in table.groupby("tenant", sort=True)}


def summarize(table: pd.DataFrame, tl: Timelines, start_s: float, end_s: float) -> dict:
    serving = max(end_s - start_s, 0.0)
    per_s = (lambda x: float(x) / serving) if serving > 0 else (lambda x: None)
    n = table["output_tokens"].to_numpy()
    count = len(table)
    schemes = _schemes(table, per_s)
    return {
        "requests": count,
        "finished": int(table["finished"].sum()),
        "output_tokens": int(n.sum()),
        "serving_start_s": float(start_s),
        "serving_end_s": float(end_s),
        "serving_time_s": serving,
        "throughput_tokens_per_s": per_s(n.sum()),
        "request_throughput_per_s": per_s(table["finished"].sum()),
        "smooth_goodput": per_s(table["benefit"].sum()),
        "total_benefit": float(table["benefit"].sum()),
        **schemes["ttft_tbt"],
        "schemes": schemes,
        "ttft_s": distribution(table["ttft_s"]),
        "tbt_s": distribution(tl.gaps()),
        "tpot_s": distribution(table["tpot_s"]),
        "e2e_s": distribution(table["e2e_s"]),
        "idle_latency_s": distribution(table["idle_latency_s"]),
        "fluidity_index_mean": float(table["fluidity_index"].mean()) if count else None,
        "andes_qoe_mean": float(table["andes_qoe"].mean()) if count else None,
        **({"tenants": _tenants(table, per_s)} if "tenant" in table.columns and table["tenant"].nunique() > 1 else {}),
    }


INTERVALS = {"tokens": "first arrival to the last token (or run.json's end_s)",
             "bench": "the benchmark tool's own duration (vllm bench serve's `duration`)"}
HEADLINE_SCHEME = "ttft_tbt"


def score(run: Run, slo: SLO = SLO(), window: Window = Window(),
          tenant_slos: dict[str, SLO] | None = None, interval: str = "tokens") -> tuple[pd.DataFrame, dict]:
    """The per-request table and the summary of a validated run. Rates divide by the
    `interval` (`INTERVALS`)."""
    end_s = run_end(run)
    requests, tokens = _windowed(run, window)
    tl = timelines(requests, tokens)
    table = per_request(requests, tl, slo, end_s, tenant_slos)
    start_s = float(requests["arrival_s"].min()) if len(requests) else 0.0
    serving_end = end_s if run.end_s is not None else (float(tokens["time_s"].max()) if len(tokens) else start_s)
    serving_end -= window.cooldown_s
    if interval == "bench":
        duration = run.meta.get("bench_duration_s")
        if duration is None:
            raise ValueError("--interval bench: this run carries no benchmark duration (a vllm bench serve "
                             "result does); use --interval tokens")
        start_s, serving_end = 0.0, float(duration) - window.cooldown_s
    elif interval != "tokens":
        raise ValueError(f"--interval: expected one of {list(INTERVALS)}, got {interval!r}")
    summary = summarize(table, tl, start_s, serving_end)
    summary["parameters"] = {
        **slo.as_dict(), **asdict(window),
        **({"tenant_slo": {t: s.as_dict() for t, s in tenant_slos.items()}} if tenant_slos else {}),
        "end_s": end_s, "end_from": "run.json" if run.end_s is not None else "last token",
        "percentiles": "numpy linear interpolation", "interval": INTERVALS[interval],
        "headline_scheme": HEADLINE_SCHEME,
        "excluded_by_window": int(len(run.requests) - len(requests)),
    }
    return table, summary
