"""A run without progress says why (issue 15.7): the messages from hand-written
states, the driver's thread against a real Progress actor, and a run whose
input pipeline cannot get a CPU on the test session's 2-CPU cluster."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgc_ray.train.watchdog import stall_message

ROOT = Path(__file__).resolve().parents[1]
CPU_RUN = {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0, "data_cpus": 1.0}


@pytest.mark.parametrize("phase,step,free,expected", [
    ("starting", 0, {"CPU": 0.0}, "run 'r': no worker has started after 130 s; waiting for resources: the run asks "
     "for 2 workers x 1 CPU, plus 1 CPU for its input pipeline, and the cluster has 0 of 2 CPUs free. An "
     "autoscaling cluster adds nodes for it; otherwise lower --num-workers or --cpus-per-worker"),
    ("started", 0, {}, "run 'r': no training step for 130 s before the first batch of the epoch; the workers wait "
     "for data: the input pipeline's read/decode tasks need a free CPU, and the cluster has 0 of 2 CPUs free (none: they "
     "cannot run until one frees up)"),
    ("training", 40, {"CPU": 1.5}, "run 'r': no training step for 130 s since global step 40; the workers wait "
     "for data: the input pipeline's read/decode tasks need a free CPU, and the cluster has 1.5 of 2 CPUs free"),
    ("validating", 40, {"CPU": 1.0}, "run 'r': validating for 130 s after global step 40 (its batches come from "
     "the input pipeline too); the cluster has 1 of 2 CPUs free"),
])
def test_stall_messages(phase, step, free, expected):
    assert stall_message("r", phase, step, 130.4, CPU_RUN, free, {"CPU": 2.0}) == expected


def test_gpu_requests_name_the_gpus():
    gpu = {**CPU_RUN, "gpus_per_worker": 1.0}
    text = stall_message("r", "starting", 0, 61, gpu, {"CPU": 8.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0})
    assert "asks for 2 workers x 1 CPU + 1 GPU" in text and "8 of 8 CPUs free, 0 of 1 GPUs" in text


def test_watchdog_reports_each_silence_once_per_period(ray_cluster, caplog, monkeypatch):
    """The driver's thread against a scripted progress actor (each poll gets
    the next (phase, step, idle s) state; none left: the cluster went away),
    so the test needs no sleeps: one line per period of one silence, news
    resets it. The real Progress actor is exercised by the run below."""
    import ray

    import cgc_ray.train.watchdog as watchdog

    @ray.remote(num_cpus=0)
    class ScriptedProgress:
        def __init__(self, states):
            self.states = list(states)

        def last(self):
            if not self.states:
                raise RuntimeError("the run is over")
            return self.states.pop(0)

    states = [("starting", 0, 0.5), ("starting", 0, 1.2), ("starting", 0, 1.6), ("starting", 0, 1.9),  # 1 line
              ("training", 7, 0.1), ("training", 7, 0.7),  # news: nothing to say
              ("training", 7, 1.1), ("training", 7, 1.5),  # a new silence since step 7: 1 line
              ("training", 7, 2.2)]  # its second period: 1 line
    monkeypatch.setattr(watchdog, "POLL_SECONDS", 0.01)
    caplog.set_level(logging.WARNING, logger="cgc_ray.train.watchdog")
    with watchdog.Watchdog(ScriptedProgress.remote(states), "r", CPU_RUN, limit=1.0) as dog:
        dog.thread.join(timeout=120)  # ends when the script does
        assert not dog.thread.is_alive()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "no worker has started after 1 s" in lines[0]
    assert "no training step for 1 s since global step 7" in lines[1]
    assert "no training step for 2 s since global step 7" in lines[2]


def test_a_run_whose_input_cannot_get_a_cpu_says_so(ray_cluster, tmp_path):
    """2 workers x 1 CPU on the 2-CPU cluster (--autoscaling lets it past the
    pre-start check): the workers start, Ray Data's decode tasks never get a
    CPU, and the log says so instead of nothing."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    argv = [sys.executable, str(ROOT / "jobs" / "imagenet.py"), "--autoscaling", "--cpus-per-worker", "1",
            "--stall-seconds", "10", "--epochs", "1", "--storage-path", str(tmp_path)]
    found, deadline = None, time.time() + 300
    with open(tmp_path / "job.log", "w") as out:
        job = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        try:
            while found is None and job.poll() is None and time.time() < deadline:
                time.sleep(1)
                found = next((x for x in (tmp_path / "job.log").read_text().splitlines()
                              if "no training step for" in x), None)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert found, (tmp_path / "job.log").read_text()[-3000:]
    assert "before the first batch" in found and "0 of 2 CPUs free (none: they cannot run" in found
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline + 120:
        time.sleep(1)  # the killed driver's workers go away before the next test
