"""A sweep's simulated points as Ray tasks spread over a Ray cluster (`pdlab sweep
--address HEAD:PORT`): one CPU each, results streamed back as they finish, a point
whose node died (or whose worker crashed) run again elsewhere, up to `TRIES` times.
A task sends back its run, and the driver writes the run folders, so the nodes
need pdlab installed (the same package and traces) but no shared disk."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from experiments.runs.runformat import write_run
from experiments.sweeps.rows import run_point

TRIES = 3

Job = tuple
"""(index, point, window, folder or None, stalled, replays), as `points._jobs` builds them."""


def run_point_task(job: Job) -> tuple:
    """On a node: run and score one point; (index, row, stalled ids, the run when its
    folder is kept, error message or "")."""
    index, point, window, folder, stalled, replays = job
    try:
        row, ids, run = run_point(point, window, None, stalled, replays)
    except ValueError as exc:
        return index, None, None, None, str(exc)
    return index, row, ids, run if folder is not None else None, ""


def run_on_cluster(work: list[Job], address: str, done: Callable[[int, dict, list], None],
                   lost: Callable[[str], None]) -> None:
    """Run every job as a task on the Ray cluster at `address`; `done(index, row, ids)`
    for each as it finishes (its run folder written first), `lost(message)` for each
    retry of a point whose node was lost."""
    import ray

    from cluster.live.raycluster import connect

    connect(address, field="--address")
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point_task)
        lost_kinds = (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                      ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)
        running = {task.remote(job): (job, 1) for job in work}
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job, tries = running.pop(ref)
            try:
                index, row, ids, run, error = ray.get(ref)
            except lost_kinds as exc:
                where = job[1].folder.as_posix()
                if tries >= TRIES:
                    raise ConnectionError(f"point {where}: lost {tries} times ({type(exc).__name__})") from None
                lost(f"point {where}: its node or worker was lost ({type(exc).__name__}); running it again")
                running[task.remote(job)] = (job, tries + 1)
                continue
            if error:
                raise ValueError(error)
            if run is not None:
                write_run(run, Path(job[3]))
            done(index, row, ids)
    finally:
        ray.shutdown()
