"""The quickstart: `configs/quickstart.yaml` simulated three ways on the same
requests (colocated prefill-first, chunked prefill, disaggregated), scored side by
side with classic and smooth metrics, with token timelines of the requests that
stalled most, written to one folder."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import track

from experiments.config import load_variants
from experiments.metrics import score
from experiments.plots import token_timelines
from experiments.runformat import read_run
from experiments.runner import run_experiment
from experiments.show import print_summaries
from router.slo import SLO

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def quickstart(out: Path) -> int:
    console = Console()
    configs = load_variants(CONFIG)
    console.print(f"[bold]pdlab quickstart[/bold]: {CONFIG.name}, {len(configs)} variants, results in {out}")
    runs, tables, summaries = {}, {}, {}
    for variant, config in track(configs.items(), description="simulating", console=console):
        runs[variant] = read_run(run_experiment(config, out / variant))
        slo = SLO(**config.slo)
        tables[variant], summaries[variant] = score(runs[variant], slo)
        tables[variant].to_csv(out / variant / "per_request.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print_summaries(summaries, console)
    first = next(iter(tables))
    stalled = tables[first].sort_values("max_tbt_s", ascending=False)["request_id"].head(3).tolist()
    plots = token_timelines(runs, stalled, SLO(**configs[first].slo), out / "timelines")
    console.print(f"wrote {out / 'summary.json'}, per-request tables, {', '.join(str(p) for p in plots)}")
    return 0
