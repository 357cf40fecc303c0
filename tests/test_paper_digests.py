"""The paper's experiments simulate to the same tables as before the router's SLO state
became incremental (issue 15): each run's requests, tokens and events tables hash to
the digest recorded by commit b4459c0 (tests/data/paper_digests.json); the smooth
router without parking (issue 13), which did not exist then."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.config.experiment import load_config
from experiments.runs.runner import run_config

ROOT = Path(__file__).resolve().parents[1]
DIGESTS = json.loads((ROOT / "tests" / "data" / "paper_digests.json").read_text())


def digest(run) -> str:
    """Of the tables' columns and values; floats rounded to 1e-10 (a last bit of a
    CPU's vector sum is not a change of result)."""
    h = hashlib.sha256()
    for name in ("requests", "tokens", "events"):
        table = getattr(run, name)
        table = table.assign(**{c: table[c].round(10) for c in table.select_dtypes("float").columns})
        h.update(name.encode())
        h.update(",".join(table.columns).encode())
        h.update(pd.util.hash_pandas_object(table, index=False).values.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(DIGESTS))
def test_a_paper_experiment_simulates_to_the_recorded_tables(case):
    name, policy = case.split("/")
    pinned = ["router.params={park: false}"] if policy == "smooth_goodput" else []   # parking came after
    config = load_config(ROOT / "configs" / "paper" / f"{name}.yaml", [f"router.policy={policy}", *pinned])
    assert digest(run_config(config)) == DIGESTS[case]
