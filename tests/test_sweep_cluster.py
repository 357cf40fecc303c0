"""`pdlab sweep --address`: simulated points as Ray tasks on a real two-node Ray
cluster started on this machine (two `ray start` process groups on loopback), the
same results as a local run, and a node killed mid-sweep losing no point."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.live.localnodes import LocalNodes, client_env
from experiments.sweeps.spec import load_sweep
from experiments.sweeps.sweep import run_sweep, staging

SWEEP = {
    "name": "two-nodes",
    "base": {
        "cluster": {"model": "Llama-3.1-8B", "hardware": "A100-80GB",
                    "instances": [{"role": "prefill"}, {"role": "decode"}]},
        "workload": {"requests": 1500, "arrival": {"process": "poisson", "rate": 20.0},
                     "lengths": {"dist": "uniform", "prompt": [64, 512], "output": [8, 128]}},
    },
    "sweep": {"rates": [10, 20], "policies": ["round_robin", "least_loaded"], "seeds": [0, 1, 2]},
}
PDLAB = str(Path(sys.executable).with_name("pdlab"))


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    return path


@pytest.fixture(scope="module")
def local_table(sweep_file, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("local")
    return out, run_sweep(load_sweep(sweep_file), out, quiet=True)


def sweep_on(address: str, sweep_file: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([PDLAB, "sweep", str(sweep_file), "--out", str(out), "--address", address],
                            env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def same_outputs(out: Path, local: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), pd.read_parquet(local / "results.parquet"))
    assert (out / "report.md").read_text() == (local / "report.md").read_text()
    runs = sorted(p.relative_to(out) for p in (out / "runs").rglob("*.parquet"))
    assert runs == sorted(p.relative_to(local) for p in (local / "runs").rglob("*.parquet")) and runs
    for path in runs:
        pd.testing.assert_frame_equal(pd.read_parquet(out / path), pd.read_parquet(local / path))


def test_a_sweep_across_two_nodes_writes_what_a_local_run_writes(sweep_file, local_table, tmp_path):
    local, _ = local_table
    with LocalNodes([1, 1]) as nodes:
        sweep = sweep_on(nodes.address, sweep_file, tmp_path / "out")
        out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    assert "(12 rows)" in out
    same_outputs(tmp_path / "out", local)


def test_a_node_killed_mid_sweep_loses_no_point(sweep_file, local_table, tmp_path):
    local, _ = local_table
    with LocalNodes([1, 1]) as nodes:
        sweep = sweep_on(nodes.address, sweep_file, tmp_path / "out")
        deadline = time.monotonic() + 120
        while not (staging(tmp_path / "out") / "runs").exists() and sweep.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes.stop_node(1)
        out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    assert "its node or worker was lost" in err and "running it again" in err
    same_outputs(tmp_path / "out", local)


def test_an_unreachable_cluster_is_a_clear_error(sweep_file, tmp_path):
    from cluster.live.localnodes import free_port

    sweep = subprocess.run([PDLAB, "sweep", str(sweep_file), "--out", str(tmp_path), "--address",
                            f"127.0.0.1:{free_port()}"], env=client_env(), capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 2
    assert "pdlab sweep: error:" in sweep.stderr and "Traceback" not in sweep.stderr
