"""Experiment configs: validation errors that name the file and key, --set overrides, `pdlab run`."""
from __future__ import annotations

import json

import pytest
import yaml

from experiments.config.experiment import ConfigError, load_config

MINIMAL = {"workload": {"requests": 20, "arrival": {"process": "poisson", "rate": 2.0},
                        "lengths": {"dist": "fixed", "prompt": 100, "output": 20}}}


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change,message", [
    ({"cluster": {"instances": [{"role": "both"}]}}, r"exp.yaml: cluster.instances.0.role: .*'prefill', 'decode' or 'colocated'"),
    ({"cluster": {"instances": [{"role": "decode", "tp": 3}]}}, r"cluster.instances.0.tp"),
    ({"router": {"polcy": "x"}}, r"router.polcy: unknown key; expected one of \['policy', 'params', 'tick_s'\]"),
    ({"slo": {"speed": 3}}, r"slo.speed: unknown SLO key; expected one of \['ttft'"),
    ({"workload": {"requests": 5, "arrival": {"process": "poisson", "rate": -1},
                   "lengths": {"dist": "fixed", "prompt": 1, "output": 1}}}, r"workload.*rate"),
])
def test_bad_configs_name_file_and_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, {**MINIMAL, **change}))


def test_set_overrides_nested_keys(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(path, ["router.policy=round_robin", "cluster.scheduler.chunked_prefill=true",
                                "workload.arrival.rate=5", "seed=3"])
    assert config.cluster.scheduler.chunked_prefill is True and config.seed == 3
    assert config.workload.tenants[0].arrival.rate == 5
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["seed"])


def test_unknown_policy_and_missing_file(tmp_path, pdlab):
    code, _, err = pdlab("run", write(tmp_path, {**MINIMAL, "router": {"policy": "clairvoyant"}}), "--out", tmp_path / "r")
    assert code == 2 and "unknown policy 'clairvoyant'" in err and "round_robin" in err
    code, _, err = pdlab("run", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: no such file" in err


def test_pdlab_run_writes_a_scored_run(tmp_path, pdlab):
    code, out, err = pdlab("run", write(tmp_path, MINIMAL), "--out", tmp_path / "run", "--set", "seed=4")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["seed"] == 4 and meta["config"]["seed"] == 4 and meta["runtime"] == "sim"
    assert meta["config"]["cluster"]["model"] == "Llama-3.1-8B" and "numpy" in meta["versions"]
    code, out, _ = pdlab("metrics", tmp_path / "run", "--json")
    assert json.loads(out)["requests"] == 20


def test_each_tenant_is_scored_with_its_own_slo(tmp_path, pdlab):
    import numpy as np
    import pandas as pd

    tenants = {"workload": {"requests": 40, "tenants": [
        {"name": "chat", "arrival": {"process": "poisson", "rate": 2.0},
         "lengths": {"dist": "fixed", "prompt": 100, "output": 30}, "slo": {"v": 0.1}},
        {"name": "skim", "arrival": {"process": "poisson", "rate": 2.0},
         "lengths": {"dist": "fixed", "prompt": 100, "output": 30}, "slo": {"v": 0.001}}]}}
    code, _, err = pdlab("run", write(tmp_path, tenants), "--out", tmp_path / "run")
    assert code == 0, err
    code, out, _ = pdlab("metrics", tmp_path / "run", "--json", "--per-request", tmp_path / "table.csv")
    summary, table = json.loads(out), pd.read_csv(tmp_path / "table.csv")
    assert set(summary["tenants"]) == {"chat", "skim"}
    tokens = pd.read_parquet(tmp_path / "run" / "tokens.parquet")
    for tenant, v in (("chat", 0.1), ("skim", 0.001)):
        row = table[table["tenant"] == tenant].iloc[0]
        times = tokens[tokens["request_id"] == row["request_id"]]["time_s"].to_numpy() - row["arrival_s"]
        assert row["idle_latency_s"] == pytest.approx(max(0.0, np.max(times - v * np.arange(1, len(times) + 1))))
    assert summary["tenants"]["skim"]["idle_latency_s"]["mean"] > summary["tenants"]["chat"]["idle_latency_s"]["mean"]


def test_every_file_kind_reports_an_unknown_key_the_same_way(tmp_path):
    from cluster.hardware.perfmodel import load_iteration_model
    from cluster.hardware.specs import CONFIGS, load_model
    from cluster.hardware.yamlfile import ConfigError as Error
    from experiments.sweeps.spec import load_sweep

    model = yaml.safe_load((CONFIGS / "models" / "Llama-2-7B.yaml").read_text())
    perf = yaml.safe_load((CONFIGS / "perf" / "vidur-llama-2-7b-a100-tp1.yaml").read_text())
    sweep = {"base": MINIMAL, "sweep": {"rates": [1], "policies": ["round_robin"]}}
    cases = [(load_model, "model.yaml", {**model, "colour": 1}, "colour"),
             (load_iteration_model, "perf.yaml", {**perf, "colour": 1}, "colour"),
             (load_config, "exp.yaml", {**MINIMAL, "colour": 1}, "colour"),
             (load_config, "tenant.yaml", {"workload": {**MINIMAL["workload"], "colour": 1}}, "workload.colour"),
             (load_sweep, "sweep.yaml", {**sweep, "sweep": {**sweep["sweep"], "colour": 1}}, "sweep.colour")]
    for load, name, data, key in cases:
        with pytest.raises(Error, match=rf"{name}: {key}: unknown key; expected one of \[") as caught:
            load(write(tmp_path, data, name))
        assert str(caught.value).count("\n") == 0
