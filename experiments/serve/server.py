"""`pdlab serve`: a live disaggregated cluster (any engine, any router) behind the
OpenAI-compatible front door, until it is stopped (Ctrl-C, SIGTERM); then the run
folder is written as for `pdlab run`, its requests those the clients sent."""
from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from experiments.config.experiment import ExperimentConfig
from experiments.runs.runformat import Run, validate, write_run
from experiments.runs.runner import build_setup, live_options, run_meta
from experiments.serve.tokenizer import TextCodec, make_tokenizer
from experiments.workloads.workload import COLUMNS


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    out: Path = Path("runs/serve")
    model: str | None = None
    tokenizer: str | None = None
    drain_s: float = 5.0


def _codec(config: ExperimentConfig, options: ServeOptions) -> TextCodec:
    """The tokenizer given, else a real engine's model folder's own, else one made for
    the model's vocabulary beside the run folder."""
    from cluster.hardware.specs import load_model

    model_folder = config.ray.model_path
    for folder in (options.tokenizer, model_folder):
        if folder and (Path(folder) / "tokenizer.json").is_file():
            return TextCodec(folder)
    if options.tokenizer:
        raise ValueError(f"--tokenizer: expected a folder with a tokenizer.json, got {options.tokenizer!r}")
    vocab = load_model(config.cluster.model).vocab_size
    if model_folder:
        import json

        vocab = int(json.loads((Path(model_folder) / "config.json").read_text()).get("vocab_size", vocab))
    return TextCodec(make_tokenizer(options.out / "tokenizer", vocab))


def serve(config: ExperimentConfig, options: ServeOptions, ready: Callable[[str], None] = print) -> Path:
    """Serve until stopped; the run folder written."""
    from cluster.live.raycluster import connect, start_workers, stop
    from cluster.live.serving import ServingRuntime
    from experiments.serve.app import FrontDoor

    options.out.mkdir(parents=True, exist_ok=True)
    codec = _codec(config, options)
    tenants = [tenant.name for tenant in config.workload.tenants]
    setup = build_setup(config, pd.DataFrame({column: [] for column in COLUMNS}), tenants=tenants)
    workers, driver = live_options(config)
    connect(config.ray.address)
    actors, groups = start_workers(setup.instances, [int(n) for n in setup.table.node], workers)
    runtime = ServingRuntime(setup, actors, driver, codec.vocab_size)
    model = options.model or config.cluster.model
    import uvicorn

    server = _quiet_server()(uvicorn.Config(FrontDoor(runtime, codec, model, tuple(tenants)).app(), host=options.host,
                                           port=options.port, log_level="warning",
                                           timeout_graceful_shutdown=options.drain_s))
    outcome: dict = {}

    def loop() -> None:
        try:
            outcome["record"] = runtime.run()
        except BaseException as exc:  # noqa: BLE001 (the server stops and the error is raised in the main thread)
            outcome["error"] = exc
            server.should_exit = True

    thread = threading.Thread(target=loop, name="pdlab-serving", daemon=True)
    thread.start()
    announce = threading.Thread(target=_announce, args=(server, options, model, ready), daemon=True)
    announce.start()
    try:
        server.run()
    finally:
        runtime.close()
        thread.join()
        stop(actors, groups)
    if "error" in outcome:
        raise outcome["error"]
    record = outcome["record"]
    record.requests["client_request_id"] = [runtime.client_ids.get(i, "") for i in record.requests["request_id"]]
    info = run_meta(config, setup, record.end_s, "ray") | {"served": {"host": options.host, "port": options.port,
                                                                  "model": model}}
    return _keep_tokenizer(options.out, lambda: write_run(
        validate(Run(record.requests, record.tokens, record.events(), info, record.steps())), options.out))


def _keep_tokenizer(out: Path, write: Callable[[], Path]) -> Path:
    """Write the run folder (which replaces the folder) keeping the tokenizer made in it."""
    made = out / "tokenizer"
    if not made.is_dir():
        return write()
    with tempfile.TemporaryDirectory() as kept:
        shutil.copytree(made, Path(kept) / "tokenizer")
        path = write()
        shutil.copytree(Path(kept) / "tokenizer", made)
    return path


def _quiet_server():
    import uvicorn

    class Quiet(uvicorn.Server):
        """Stops on SIGINT or SIGTERM (a second one forces it) without raising the signal
        again when done, as uvicorn otherwise does: the run folder is written after."""

        @contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Quiet


def _announce(server, options: ServeOptions, model: str, ready: Callable[[str], None]) -> None:
    import time

    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        ready(f"pdlab serve: {model!r} on http://{options.host}:{options.port}/v1 (Ctrl-C to stop; "
              f"the run folder goes to {options.out})")
