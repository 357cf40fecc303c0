"""Bad input and faults (issue 17): a cluster that cannot serve is refused at the edge,
a request no instance could ever hold is rejected with its reason the same way in
both runtimes, and a simulated run with nothing left to happen ends its requests as
stalled instead of leaving them silently unfinished."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import read_run
from experiments.runs.runner import build_setup, simulate
from experiments.workloads.workload import generate
from router.policy import Policy


def tiny(**cluster) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}], "kv_blocks": 40, **cluster},
        "router": {"policy": "least_loaded"},
        "ray": {"speedup": 4.0, "worker_cpus": 0.1},
        "workload": {"requests": 10, "arrival": {"process": "constant", "rate": 10.0},
                     "lengths": {"dist": "uniform", "prompt": [100, 1000], "output": [10, 40]}}})


def test_a_cluster_with_no_prefill_instance_is_refused_in_one_line():
    done = subprocess.run([sys.executable, "-m", "experiments.cli.main", "run", "configs/sim-disagg.yaml",
                           "--set", "cluster.instances=[{role: decode, count: 2}]"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cluster.instances: no instance can prefill" in done.stderr


def too_large(run) -> dict[int, str]:
    rejected = run.requests[run.requests["status"] == "rejected"]["request_id"]
    events = run.events if not callable(run.events) else run.events()
    reasons = events[events["kind"] == "reject"].set_index("request_id")["detail"]
    return {int(r): reasons[r] for r in rejected}


def test_a_request_larger_than_any_instance_is_rejected_with_its_reason():
    run = simulate(tiny())
    big = too_large(run)
    lengths = run.requests.set_index("request_id")
    fits = -(-(lengths["prompt_tokens"] + lengths["planned_output_tokens"]) // 16) <= 40
    assert big and set(big) == set(fits[~fits].index)
    assert all(why.startswith("too large: its prompt") and "KV blocks; the largest instance" in why
               for why in big.values())
    assert set(run.requests["status"]) <= {"finished", "rejected"}


def test_the_live_runtime_rejects_the_same_requests_for_the_same_reason(local_ray):
    from cluster.live.driver import LiveRuntime
    from cluster.live.raycluster import start_workers, stop
    from experiments.runs.runner import live_options

    config = tiny().model_copy(update={"runtime": "ray"})
    setup = build_setup(config, generate(config.workload, config.seed))
    workers, options = live_options(config)
    actors, groups = start_workers(setup.instances, [0] * len(setup.instances), workers)
    try:
        record = LiveRuntime(setup, actors, options).run()
    finally:
        stop(actors, groups)
    assert too_large(record) == too_large(simulate(tiny()))


class Idle(Policy):
    name = ""

    def decide(self, snapshot):
        return []


def test_a_simulated_run_with_nothing_left_to_happen_ends_its_requests_as_stalled():
    config = tiny(kv_blocks=4000)
    setup = build_setup(config, generate(config.workload, config.seed))
    setup.policy = Idle()
    record = Simulator(setup).run()
    assert set(record.requests["status"]) == {"aborted"}
    reasons = record.events().query("kind == 'abort'")["detail"]
    stalled = "stalled: nothing left to happen while it was waiting"
    assert len(reasons) == 10 and all(r.startswith(stalled) for r in reasons)


def test_a_simulated_run_that_only_ticks_ends_its_requests_as_stalled():
    from experiments.runs.runner import build_setup as setup_of

    config = tiny(kv_blocks=4000).model_copy(update={"router": tiny().router.model_copy(update={"tick_s": 0.25})})
    setup = setup_of(config, generate(config.workload, config.seed))
    setup.policy = Idle()                              # decides nothing at any tick, ever
    record = Simulator(setup).run()
    reasons = record.events().query("kind == 'abort'")["detail"]
    assert set(record.requests["status"]) == {"aborted"} and len(reasons) == 10
    assert all(r.startswith("stalled: nothing left to happen") for r in reasons)
    assert record.end_s < 200


def _run(end_s=3.0, arrival=0.0, last=2.5):
    import pandas as pd

    from experiments.runs.runformat import Run
    requests = pd.DataFrame({"request_id": [0, 1], "arrival_s": [arrival, 1.0], "prompt_tokens": [5, 5],
                             "output_tokens": [2, 1], "status": ["finished", "finished"]})
    tokens = pd.DataFrame({"request_id": [0, 1, 0], "index": [1, 1, 2], "time_s": [0.5, 1.2, last]})
    return Run(requests, tokens, pd.DataFrame({"time_s": [], "kind": [], "request_id": []}), {"end_s": end_s})


@pytest.mark.parametrize("case, message", [
    ({"end_s": 1.0}, r"run.json, key 'end_s': the run ends at 1.0 s but tokens row 3 \(request 0\) came at 2.5 s"),
    ({"last": 1e300}, "came at 1e\\+300 s; expected end_s at or after the last token"),
    ({"arrival": -1.0}, r"requests row 1, column 'arrival_s': expected seconds >= 0, got -1.0")])
def test_a_run_whose_times_contradict_each_other_is_refused_naming_what(case, message):
    from experiments.runs.runformat import RunFormatError, validate
    with pytest.raises(RunFormatError, match=message):
        validate(_run(**case))
    validate(_run())


def test_harm_refuses_tables_that_its_config_did_not_make():
    from experiments.runs.runformat import Run
    from experiments.scoring.harm import check_replayable

    config = tiny(kv_blocks=4000)
    run = simulate(config)
    check_replayable(run, config)
    kept = run.requests["request_id"] >= 3
    cut = Run(run.requests[kept], run.tokens[run.tokens["request_id"] >= 3], run.events, run.meta)
    with pytest.raises(ValueError, match="the config makes 10 requests, the requests table has 7"):
        check_replayable(cut, config)
    shifted = run.requests.assign(arrival_s=run.requests["arrival_s"] + (run.requests["request_id"] == 4) * 0.5)
    with pytest.raises(ValueError, match="request 4 has arrival_s"):
        check_replayable(Run(shifted, run.tokens, run.events, run.meta), config)


def test_a_live_run_that_lost_every_worker_exits_non_zero(local_ray, pdlab, tmp_path, monkeypatch):
    import threading

    import ray
    import yaml

    from cluster.live import raycluster

    started = raycluster.start_workers

    def start_then_kill(*args, **kwargs):
        actors, groups = started(*args, **kwargs)
        threading.Timer(1.0, lambda: [ray.kill(actor) for actor in actors]).start()
        return actors, groups

    monkeypatch.setattr(raycluster, "start_workers", start_then_kill)
    config = {"runtime": "ray", "seed": 1, "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}]},
              "ray": {"speedup": 2.0, "worker_cpus": 0.1},
              "workload": {"requests": 40, "arrival": {"process": "poisson", "rate": 10.0},
                           "lengths": {"dist": "uniform", "prompt": [50, 400], "output": [50, 200]}}}
    (tmp_path / "doomed.yaml").write_text(yaml.safe_dump(config))
    code, out, err = pdlab("run", tmp_path / "doomed.yaml", "--out", tmp_path / "run")
    assert code == 1 and "every worker died (instances [0, 1])" in err
    run = read_run(tmp_path / "run")
    assert len(run.requests) == 40 and set(run.requests["status"]) <= {"finished", "aborted", "rejected"}


def test_a_set_value_that_is_not_yaml_is_one_line(pdlab):
    base = Path(__file__).resolve().parents[1] / "configs" / "sim-disagg.yaml"
    code, _, err = pdlab("run", base, "--set", "workload.arrival={process: poisson, rate: [")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("pdlab run: error: --set 'workload.arrival={process: poisson, rate: [': not valid YAML")
