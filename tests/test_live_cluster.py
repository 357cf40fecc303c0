"""The live runtime's Ray set-up: instances pinned to their nodes of a multi-node Ray
cluster (three Ray nodes on this machine, run in a child process so that the
session's in-process Ray stays as it is), KV crossing nodes in a live run, and the
errors that a wrong address or too few resources give within seconds."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.live.raycluster import ClusterError, WorkerOptions, connect, ray_nodes, start_workers, stop
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runner import build_setup, run_config
from experiments.workloads.workload import generate

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 8
SETTINGS = {"runtime": "ray", "cluster": {"gpus_per_node": 1, "instances": [{"role": "prefill"}, {"role": "decode"}]},
            "workload": {"requests": REQUESTS, "arrival": {"process": "constant", "rate": 8.0},
                         "lengths": {"dist": "fixed", "prompt": 256, "output": 8}}}


def config(**ray) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**SETTINGS, "ray": ray})


def in_child(function: str, out: Path, timeout_s: float = 150) -> dict:
    """Run `function(out)` of this module in a fresh Python; the JSON it wrote to `out`."""
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            f"import test_live_cluster; test_live_cluster.{function}({str(out)!r})")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def placed(instances: list, nodes: list[int]) -> dict:
    """Start workers on logical `nodes`; the Ray node of each bundle and of each actor."""
    import ray
    from ray.util.placement_group import placement_group_table

    def where(_actor) -> str:
        return ray.get_runtime_context().get_node_id()

    actors, groups = start_workers(instances, nodes, WorkerOptions())
    try:
        return {"bundles": [placement_group_table(g)["bundles_to_node_id"][0] for g in groups],
                "actors": ray.get([a.__ray_call__.remote(where) for a in actors], timeout=30)}
    finally:
        stop(actors, groups)


def multi_node(out: str) -> None:
    """A head and two worker nodes of one CPU each: a live run joined through
    ray.address, then where the workers of that config (and four pinned to the
    last node) land."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        settings = config(address=cluster.address)
        run = run_config(settings)
        plan = build_setup(settings, generate(settings.workload, settings.seed))
        logical = [int(n) for n in plan.table.node]
        moves = run.events[run.events["kind"].str.startswith("transfer")]
        facts = {"ray_nodes": ray_nodes(), "logical": logical, "status": run.requests["status"].tolist(),
                 "transfers": moves[["kind", "request_id", "instance", "peer"]].values.tolist(),
                 "placed": placed(plan.instances, logical), "pinned": placed(plan.instances * 2, [2] * 4)}
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(out).write_text(json.dumps(facts))


def _settings_then_silence(listener) -> None:
    """A server that answers like an HTTP/2 one (a SETTINGS frame) and then says nothing."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connection.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))


def connect_errors(out: str) -> None:
    import socket
    import threading

    facts, listeners = {}, []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listeners.append(listener)
    not_ray, http2 = (f"127.0.0.1:{listener.getsockname()[1]}" for listener in listeners)
    threading.Thread(target=_settings_then_silence, args=(listeners[1],), daemon=True).start()
    names = {not_ray: "not ray", http2: "http2"}
    for address in ("127.0.0.1:1", "nonsense", not_ray, http2):
        started = time.monotonic()
        try:
            connect(address)
            facts[address] = None
        except ClusterError as exc:
            facts[names.get(address, address)] = [str(exc), time.monotonic() - started]
    for listener in listeners:
        listener.close()
    Path(out).write_text(json.dumps(facts))


def test_instances_on_their_own_nodes_and_kv_crosses_nodes(tmp_path):
    facts = in_child("multi_node", tmp_path / "facts.json")
    head, first, second = facts["ray_nodes"]
    assert facts["logical"] == [0, 1]
    assert facts["placed"] == {"bundles": [head, first], "actors": [head, first]}
    assert facts["pinned"] == {"bundles": [second] * 4, "actors": [second] * 4}
    assert facts["status"] == ["finished"] * REQUESTS
    starts = sorted(r for kind, r, *_ in facts["transfers"] if kind == "transfer_start")
    ends = sorted(r for kind, r, *_ in facts["transfers"] if kind == "transfer_end")
    assert starts == ends == list(range(REQUESTS))
    assert {(source, target) for _, _, source, target in facts["transfers"]} == {(0, 1)}


def test_unreachable_or_malformed_address_fails_fast(tmp_path):
    facts = in_child("connect_errors", tmp_path / "facts.json")
    message, seconds = facts["127.0.0.1:1"]
    assert "ray.address" in message and "127.0.0.1:1" in message and seconds < 10
    for name in ("not ray", "http2"):
        message, seconds = facts[name]
        assert "is not a Ray head" in message and seconds < 10
    message, seconds = facts["nonsense"]
    assert "ray.address" in message and "'nonsense'" in message and seconds < 1


def live_groups() -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {pg for pg, row in placement_group_table().items() if row["state"] != "REMOVED"}


def test_too_few_resources_fail_fast_and_leave_no_placement_group(local_ray):
    plan = build_setup(config(), generate(config().workload, 0))
    before = live_groups()
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"2 workers of 64 CPU each need 128 CPU; the cluster has 2 in all.*"
                                           r"set ray.worker_cpus lower"):
        start_workers(plan.instances, [0, 1], WorkerOptions(worker_cpus=64, start_timeout_s=30))
    with pytest.raises(ClusterError, match=r"1 GPU each need 2 GPU; the cluster has 0 .*set ray.worker_gpus lower"):
        start_workers(plan.instances, [0, 1], WorkerOptions(worker_cpus=0.1, worker_gpus=1, start_timeout_s=30))
    assert time.monotonic() - started < 2
    assert live_groups() == before


def test_cli_reports_an_unreachable_address_without_a_traceback(tmp_path):
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "experiments.cli.main", "run", str(path), "--runtime", "ray",
                           "--set", "ray.address=127.0.0.1:1", "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 15
    assert done.returncode != 0
    assert "ray.address" in done.stderr and "127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
