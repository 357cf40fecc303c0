"""Running an experiment config: build the cluster, generate the workload, run the
simulator, and write the run folder (tables plus the resolved config in run.json)."""
from __future__ import annotations

import platform
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cluster.core.recorder import Recorder
from cluster.core.request import Request
from cluster.core.scheduling import InstanceSpec, SchedulerConfig
from cluster.core.setup import RunSetup, Veto
from cluster.hardware.noise import NoiseDraws
from cluster.hardware.perfmodel import IterationModel, iteration_model, kv_capacity_tokens, load_iteration_model
from cluster.hardware.specs import load_hardware, load_model
from cluster.hardware.topology import link_pool, place
from cluster.sim.simulator import Simulator
from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate, write_run, write_run_chunked
from experiments.workloads.workload import generate, tenant_slos
from migration.cost import TransferCost
from router.registry import make_policy
from router.slo import SLO
from router.snapshot import ROLES, InstanceTable

STREAM_TOKENS = 20_000_000


def host_blocks(section, model, hardware, tp: int) -> int:
    """KV blocks of host memory an instance may swap out to: `host_kv_blocks`, else its
    share (`host_memory_utilization`) of the host memory beside its GPUs."""
    if section.host_kv_blocks is not None:
        return section.host_kv_blocks
    usable = hardware.host_memory_gib * 2**30 * tp * section.host_memory_utilization
    return int(usable // (model.kv_bytes_per_token * section.scheduler.block_size))


def with_noise(perf: IterationModel, section) -> IterationModel:
    """`cluster.noise`: the fit's own when not given, else the one given (`off`: none)."""
    if section is None:
        return perf
    noise = section.noise()
    return replace(perf, noise=noise if noise.bands or noise.handoff or noise.dispatch else None)


def build_setup(config: ExperimentConfig, workload: pd.DataFrame, veto: Veto = Veto(),
                tenants: list[str] | None = None) -> RunSetup:
    """`tenants`: those given SLOs (else those of the workload's requests)."""
    section = config.cluster
    model, hardware = load_model(section.model), load_hardware(section.hardware)
    groups = [(ROLES[g.role], g.tp, g.node) for g in section.instances for _ in range(g.count)]
    placements = place(groups, section.gpus_per_node)
    scheduler = SchedulerConfig(**section.scheduler.model_dump())
    instances = []
    for index, p in enumerate(placements):
        fit = load_iteration_model(section.perf) if section.perf else iteration_model(model, hardware, p.tp)
        perf = with_noise(fit, section.noise)
        blocks = section.kv_blocks or kv_capacity_tokens(model, hardware, p.tp, section.memory_utilization) // scheduler.block_size
        instances.append(InstanceSpec(index, p.role, perf, scheduler, blocks, model.kv_bytes_per_token,
                                      hardware.link("pcie").bandwidth, host_blocks(section, model, hardware, p.tp),
                                      config.seed if section.noise_seed is None else section.noise_seed))
    table = InstanceTable([p.role for p in placements], [p.node for p in placements],
                          [i.total_blocks for i in instances], [i.watermark_blocks for i in instances],
                          scheduler.block_size, [i.perf.prefill for i in instances], [i.perf.decode for i in instances],
                          [i.host_blocks for i in instances],
                          [i.kv_bytes_per_token / i.swap_bandwidth for i in instances])
    links, path = link_pool(placements, hardware)
    overrides = tenant_slos(config.workload)
    names = workload["tenant"].unique() if tenants is None else tenants
    slos = {tenant: SLO(**{**config.slo, **overrides.get(tenant, {})}) for tenant in names}
    requests = [Request(int(i), str(t), float(a), int(p), int(o)) for i, t, a, p, o in
                zip(workload["request_id"], workload["tenant"], workload["arrival_s"], workload["prompt_tokens"],
                    workload["output_tokens"])]
    noise = instances[0].perf.noise
    overheads = NoiseDraws(noise, instances[0].noise_seed, len(instances)) \
        if noise and (noise.handoff or noise.dispatch) else None
    policy = make_policy(config.router.policy, config.router.params, config.seed)
    veto.check_rules(type(policy))
    return RunSetup(instances, table, policy, requests, slos, links, path, TransferCost(**config.migration.model_dump()),
                float(model.kv_bytes_per_token), config.horizon_s or float("inf"), config.router.tick_s, veto, overheads)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("pdlab", "numpy", "pandas", "pyarrow", "ray", "vllm"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_meta(config: ExperimentConfig, setup: RunSetup, end_s: float, runtime: str) -> dict:
    return {"end_s": end_s, "runtime": runtime, "seed": config.seed, "config": config.model_dump(mode="json"),
            "versions": versions(), "slo": config.slo, "tenant_slo": {t: s.as_dict() for t, s in setup.slos.items()}}


def _simulate(config: ExperimentConfig, veto: Veto = Veto()) -> tuple[Recorder, dict, Simulator]:
    workload = generate(config.workload, config.seed)
    simulator = Simulator(build_setup(config, workload, veto))
    record = simulator.run()
    meta = run_meta(config, simulator.setup, record.end_s, "sim")
    meta["iterations"] = int(sum(i.iterations for i in simulator.instances))
    meta["decided_at_s"] = simulator.control.decided_at
    meta["decision_rules"] = simulator.control.decision_rules
    return record, meta, simulator


REAL_ENGINE_BATCH_S = 0.005


def live_options(config: ExperimentConfig):
    """The worker actors' options and the driver's, from the config's `ray` section."""
    from cluster.live.driver import LiveOptions
    from cluster.live.raycluster import WorkerOptions

    section, emulated = config.ray, config.ray.engine == "emulated"
    workers = WorkerOptions(speedup=section.speedup, kv_scale=section.kv_scale, worker_cpus=section.worker_cpus,
                            start_timeout_s=section.start_timeout_s, transport=section.transport,
                            inbox_mib=section.shm_inbox_mib, engine=section.engine, model_path=section.model_path or "",
                            seed=config.seed, worker_gpus=section.worker_gpus)
    batch = section.report_batch_s if section.report_batch_s is not None else 0.0 if emulated else REAL_ENGINE_BATCH_S
    driver = LiveOptions(speedup=section.speedup, transfer_timeout_s=section.transfer_timeout_s, stamp=section.stamp,
                         transport=section.transport, paced_transfers=emulated, staged_kv=section.engine != "vllm",
                         report_batch_s=batch)
    return workers, driver


def _run_live(config: ExperimentConfig, progress: Callable[[int, int], None] | None) -> tuple[Recorder, dict]:
    from cluster.live.driver import LiveRuntime
    from cluster.live.raycluster import connect, start_workers, stop

    setup = build_setup(config, generate(config.workload, config.seed))
    connect(config.ray.address)
    workers, options = live_options(config)
    actors, groups = start_workers(setup.instances, [int(n) for n in setup.table.node], workers)
    runtime = LiveRuntime(setup, actors, options, progress)
    try:
        record = runtime.run()
    finally:
        stop(actors, groups)
    meta = run_meta(config, setup, record.end_s, "ray")
    lag = np.frombuffer(runtime.lag) if len(runtime.lag) else np.zeros(1)
    meta["report_lag_s"] = {"p50": float(np.percentile(lag, 50)), "p99": float(np.percentile(lag, 99))}
    meta["workers_lost"] = [i for i in range(len(actors)) if not setup.table.alive[i]]
    meta["decision_rules"] = runtime.control.decision_rules
    return record, meta


def simulate(config: ExperimentConfig, veto: Veto = Veto()) -> Run:
    """Run the simulator; `veto` drops router decisions (for counterfactuals)."""
    return simulate_with(config, veto)[0]


def simulate_with(config: ExperimentConfig, veto: Veto = Veto()) -> tuple[Run, Simulator]:
    """The simulated run and the simulator that made it."""
    record, meta, simulator = _simulate(config, veto)
    return validate(Run(record.requests, record.tokens, record.events(), meta, record.steps())), simulator


def run_config(config: ExperimentConfig, progress: Callable[[int, int], None] | None = None) -> Run:
    """Run the config on its runtime (the simulator, or live on Ray) and return the run."""
    record, meta = _run_live(config, progress) if config.runtime == "ray" else _simulate(config)[:2]
    return validate(Run(record.requests, record.tokens, record.events(), meta, record.steps()))


def run_experiment(config: ExperimentConfig, out: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Run the config (simulated, or live on Ray) and write the run folder; a run of
    more than STREAM_TOKENS tokens has its tokens table written in chunks, never
    whole in memory. `progress(done, total)` hears of each request that ends (live)."""
    record, meta = _run_live(config, progress) if config.runtime == "ray" else _simulate(config)[:2]
    if record.total_tokens <= STREAM_TOKENS:
        return write_run(Run(record.requests, record.tokens, record.events(), meta, record.steps()), out)
    empty = pd.DataFrame({"request_id": pd.Series(dtype="int64"), "index": pd.Series(dtype="int64"),
                          "time_s": pd.Series(dtype="float64")})
    return write_run_chunked(Run(record.requests, empty, record.events(), meta, record.steps()),
                             record.token_chunks(STREAM_TOKENS), out)
