"""The quickstart: a small run scored with classic and smooth metrics, and the
output-delay trick applied to it, written to a folder with a table and a plot.

Until the simulator and the live cluster land, the run is a synthetic one
(`experiments.synthetic`); the scoring, the run format and the report are the real ones.
"""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from experiments.delay import delay_output
from experiments.metrics import score
from experiments.plots import token_timelines
from experiments.runformat import read_run, validate, write_run
from experiments.show import print_summaries
from experiments.synthetic import synthetic_run
from router.slo import SLO


def quickstart(out: Path) -> int:
    console = Console()
    slo = SLO()
    console.print(f"[bold]pdlab quickstart[/bold]: a synthetic run of 400 requests, scored into {out}")
    run = read_run(write_run(synthetic_run(requests=400, rate=2.0, tbt=0.06, stall_probability=0.015, seed=7), out / "run"))
    delayed = validate(delay_output(run, slo.tbt))
    write_run(delayed, out / "run-delayed")
    table, summary = score(run, slo)
    delayed_summary = score(delayed, slo)[1]
    table.to_csv(out / "per_request.csv", index=False)
    summaries = {"run": summary, "output delayed (TBT 0.1 s)": delayed_summary}
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print_summaries(summaries, console)
    stalled = table[table["finished"]].sort_values("max_tbt_s", ascending=False)["request_id"].head(3).tolist()
    plots = token_timelines({"as received": run, "output delayed": delayed}, stalled, slo, out / "timelines")
    console.print(f"wrote {out / 'summary.json'}, {out / 'per_request.csv'}, {', '.join(str(p) for p in plots)}")
    return 0
