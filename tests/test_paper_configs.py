"""Every experiment and sweep in configs/paper/ (docs/paper.md) validates, and a
heavily shortened version of each simulates to the end."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.config.experiment import load_variants
from experiments.runs.runner import simulate
from experiments.sweeps.spec import load_sweep

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
FILES = sorted(PAPER.glob("*.yaml"))
SWEEPS = [p for p in FILES if "sweep" in yaml.safe_load(p.read_text())]
EXPERIMENTS = [p for p in FILES if p not in SWEEPS]
SHORT = ["workload.requests=30"]
STATUSES = {"finished", "unfinished", "rejected"}


def simulates_to_the_end(config) -> None:
    run = simulate(config)
    assert len(run.requests) == config.workload.requests
    assert set(run.requests["status"]) <= STATUSES
    finished = run.requests[run.requests["status"] == "finished"]
    assert (finished["output_tokens"] == finished["planned_output_tokens"]).all()


def test_the_folder_has_experiments_and_sweeps():
    assert len(EXPERIMENTS) >= 3 and len(SWEEPS) >= 4


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_validates_and_runs_shortened(path):
    for config in load_variants(path, SHORT).values():
        simulates_to_the_end(config)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_validates_and_runs_shortened(path):
    full = load_sweep(path)
    assert len(full.points) >= 2 and (full.base.router.tick_s is not None) == (len(full.spec.sweep.policies) > 1)
    top = max(full.spec.sweep.rates)
    short = load_sweep(path, [*SHORT, f"sweep.rates=[{top}]", f"sweep.seeds=[{full.seeds[0]}]"])
    assert {p.rate for p in short.points} == {top}
    for point in short.points:
        simulates_to_the_end(point.config)
