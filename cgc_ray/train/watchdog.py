"""A run that makes no progress says why: rank 0 reports its phase and step
to a small named actor; a driver thread reads it and, after `stall_seconds`
without news, logs what the run waits for (its workers' resources, the input
pipeline's CPU, a long validation) next to what the cluster has free.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

log = logging.getLogger(__name__)
POLL_SECONDS = 5.0


@ray.remote(num_cpus=0)
class Progress:
    """The run's last sign of life: phase ("starting", "started", "training",
    "validating", "checkpointing"), global step, and when it was reported."""

    def __init__(self):
        self.phase, self.step, self.at = "starting", 0, time.time()

    def beat(self, phase: str, step: int) -> None:
        self.phase, self.step, self.at = phase, step, time.time()

    def last(self) -> tuple[str, int, float]:
        return self.phase, self.step, time.time() - self.at


def open_progress(name: str):
    """The run's Progress actor, made afresh (a resubmitted run starts over)."""
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
    return Progress.options(name=name).remote()


class Beat:
    """Rank 0's reporter: at most one actor call per `every` seconds, never waited on."""

    def __init__(self, name: str | None, every: float = 2.0):
        self.actor = ray.get_actor(name) if name else None
        self.every, self.sent = every, 0.0

    def __call__(self, phase: str, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.actor is not None and (force or now - self.sent >= self.every):
            self.actor.beat.remote(phase, step)
            self.sent = now


def stall_message(run: str, phase: str, step: int, idle: float, request: dict, free: dict, total: dict) -> str:
    """Why a run shows no progress, in words. request: {"workers", "cpus_per_worker",
    "gpus_per_worker" (0 on CPU), "data_cpus"}; free/total: Ray's resource dicts."""
    have = (f"the cluster has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
            + (f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs" if request["gpus_per_worker"] else ""))
    ask = (f"{request['workers']} workers x {request['cpus_per_worker']:g} CPU"
           + (f" + {request['gpus_per_worker']:g} GPU" if request["gpus_per_worker"] else ""))
    if phase == "starting":
        return (f"run {run!r}: no worker has started after {idle:.0f} s; waiting for resources: the run asks "
                f"for {ask}, plus {request['data_cpus']:g} CPU for its input pipeline, and {have}. An "
                "autoscaling cluster adds nodes for it; otherwise lower --num-workers or --cpus-per-worker")
    if phase == "validating":
        return (f"run {run!r}: validating for {idle:.0f} s after global step {step} (its batches come from the "
                f"input pipeline too); {have}")
    if phase == "checkpointing":
        return f"run {run!r}: writing the checkpoint of global step {step} for {idle:.0f} s (to --storage-path)"
    where = "before the first batch of the epoch" if phase == "started" else f"since global step {step}"
    return (f"run {run!r}: no training step for {idle:.0f} s {where}; the workers wait for data: the input "
            f"pipeline's read/decode tasks need a free CPU, and {have}"
            + ("" if free.get("CPU", 0) >= 1 else " (none: they cannot run until one frees up)"))


class Watchdog:
    """Context manager around `trainer.fit()` in the driver: a daemon thread
    that logs `stall_message` once per `limit` seconds without progress."""

    def __init__(self, progress, run: str, request: dict, limit: float):
        self.progress, self.run, self.request, self.limit = progress, run, request, limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cgc-watchdog", daemon=True)

    def __enter__(self):
        if self.limit > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=POLL_SECONDS + 1)

    def _watch(self) -> None:
        warned = 0  # how many stall periods of the current silence were reported
        while not self.stop.wait(min(POLL_SECONDS, self.limit)):
            try:
                phase, step, idle = ray.get(self.progress.last.remote(), timeout=30)
            except Exception:  # the cluster is going away with the run: nothing to say
                return
            periods = int(idle // self.limit)
            if periods <= warned:
                warned = min(warned, periods)
                continue
            warned = periods
            log.warning(stall_message(self.run, phase, step, idle, self.request, ray.available_resources(),
                                      ray.cluster_resources()))
