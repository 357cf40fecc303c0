"""The driver interrupted (issue 17): Ctrl-C on a live run, or on a sweep run in several
processes, is one line and exit 130 and writes nothing half-done; a live run's driver
killed outright (SIGKILL) leaves no Ray process behind. Each runs `pdlab` as a user would, in its own
process group, since a terminal's Ctrl-C reaches the whole group."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from cluster.live.reaper import reap

ROOT = Path(__file__).resolve().parents[1]
LONG_LIVE = {"runtime": "ray", "seed": 1, "cluster": {"instances": [{"role": "prefill"}, {"role": "decode"}]},
             "ray": {"speedup": 1.0, "worker_cpus": 0.1},
             "workload": {"requests": 400, "arrival": {"process": "poisson", "rate": 2.0},
                          "lengths": {"dist": "fixed", "prompt": 100, "output": 100}}}


def start(*args: str) -> subprocess.Popen:
    """`pdlab ARGS` as a terminal starts it: with SIGINT's default action even where the
    tests run in the background (whose SIGINT a shell ignores, and its children with it)."""
    return subprocess.Popen([sys.executable, "-m", "experiments.cli.main", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_on_a_sweep_in_two_processes_is_one_line_and_leaves_out_as_it_was(tmp_path):
    sweep = {"name": "slow", "base_config": str(ROOT / "configs" / "sim-disagg.yaml"),
             "set": ["workload.requests=6000"],
             "sweep": {"rates": [8, 16, 24, 32], "policies": ["round_robin", "least_loaded"]}}
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("earlier results\n")
    process = start("sweep", str(tmp_path / "slow.yaml"), "--out", str(out), "--jobs", "2")
    parent = psutil.Process(process.pid)
    assert wait_for(lambda: len(parent.children()) >= 2, 60), "the sweep's worker processes did not start"
    workers = parent.children(recursive=True)
    time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert "pdlab sweep: interrupted (Ctrl-C)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "slow.yaml"]
    assert [p.name for p in out.iterdir()] == ["results.csv"]
    assert (out / "results.csv").read_text() == "earlier results\n"
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_ctrl_c_on_a_live_run_is_one_line_and_exit_130(tmp_path):
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(LONG_LIVE))
    process = start("run", str(tmp_path / "long.yaml"), "--out", str(tmp_path / "run"))
    time.sleep(12)                                     # Ray up, the workers serving
    started = psutil.Process(process.pid).children(recursive=True)
    assert sum("WorkerActor" in p.name() for p in started) == 2, [p.name() for p in started]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "pdlab run: interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    time.sleep(3)
    assert not [p.name() for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_live_run_whose_driver_is_killed_leaves_no_ray_process(tmp_path):
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(LONG_LIVE))
    process = start("run", str(tmp_path / "long.yaml"), "--out", str(tmp_path / "run"))
    driver = psutil.Process(process.pid)

    def names() -> list[str]:
        return [p.name() for p in driver.children(recursive=True) if p.is_running()]

    assert wait_for(lambda: sum("WorkerActor" in n for n in names()) >= 2, 90), names()
    started = [p for p in driver.children(recursive=True) if "reaper" not in " ".join(p.cmdline())]
    assert any("Agent" in p.name() for p in started), [p.name() for p in started]
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)

    def left() -> list[str]:
        return [p.name() for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    assert wait_for(lambda: not left(), 15), f"left running: {left()}"


def test_the_watcher_kills_what_is_left_once_its_driver_is_gone():
    driver = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"])
    assert wait_for(lambda: len(psutil.Process(driver.pid).children()) == 2, 10)
    children = psutil.Process(driver.pid).children()
    read, write = os.pipe()
    killed: list[int] = []
    watcher = threading.Thread(target=lambda: killed.extend(reap(driver.pid, read)))
    watcher.start()
    time.sleep(0.5)
    assert watcher.is_alive() and all(c.is_running() for c in children)
    driver.kill()
    driver.wait()
    os.close(write)
    watcher.join(10)
    assert sorted(killed) == sorted(c.pid for c in children)
    assert wait_for(lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], 5)
