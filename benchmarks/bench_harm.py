"""Benchmark: the whole harm report of a run with about 1,500 router moves, with 200
forked counterfactuals, as `pdlab harm RUN --forks 200 --jobs 2` makes it: the
attribution of every move, the replay, the forks (each to its move's end) and the
report. Runs: Andes preempting on `mem-llama13b` (9.5 req/s, about 2,100 moves) and
the smooth router parking on `mem-long-output` (3.25 req/s, about 1,250). The classic
router no longer serves: since it rescues only instances with requests it can still
save, it makes about 30 router moves in these runs. Target (issue 14): under 60 s on
the 2-core machine.

    .venv/bin/python benchmarks/bench_harm.py [--forks N] [--jobs N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from experiments.config.experiment import load_config
from experiments.runs.runner import simulate
from experiments.scoring.harm import HarmOptions, analyse
from experiments.scoring.harmreport import features, summary
from experiments.scoring.metrics import run_slos

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0
RUNS = {
    "andes, mem-llama13b": ("mem-llama13b.yaml", ["router.policy=andes", "workload.arrival.rate=9.5"]),
    "smooth_goodput, long outputs": ("mem-long-output.yaml", ["router.policy=smooth_goodput",
                                                              "workload.arrival.rate=3.25"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    for label, (name, overrides) in RUNS.items():
        run = simulate(load_config(ROOT / "configs" / "paper" / name, overrides))
        moves = int((run.events["decision"] >= 0).sum())
        slo, tenants = run_slos(run.meta)
        start = time.perf_counter()
        attributed = analyse(run, slo, tenants, HarmOptions(forks=0))
        middle = time.perf_counter()
        table = analyse(run, slo, tenants, HarmOptions(forks=args.forks, jobs=args.jobs), Console(quiet=True))
        summary(table, len(run.requests))
        features(table)
        end = time.perf_counter()
        whole = end - middle
        print(f"{label}: {moves} router decisions, {len(attributed)} moves; attribution alone {middle - start:.1f} s; "
              f"the report with {args.forks} forks ({args.jobs} jobs) {whole:.1f} s = {whole / TARGET_S:.2f}x the "
              f"{TARGET_S:.0f} s target ({'met' if whole <= TARGET_S else 'not met'}); mean fork horizon "
              f"{table['fork_horizon_s'].mean():.1f} s")


if __name__ == "__main__":
    main()
