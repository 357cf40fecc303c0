"""Every experiment config shipped in configs/ validates and simulates (shortened)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.config import load_variants
from experiments.runner import simulate

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_simulates(path):
    for variant, config in load_variants(path).items():
        if config.workload.requests:
            config = config.model_copy(update={"workload": config.workload.model_copy(update={"requests": 40})})
        run = simulate(config)
        assert len(run.requests) > 0 and set(run.requests["status"]) <= {"finished", "unfinished", "rejected"}
