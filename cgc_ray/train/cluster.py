"""How the jobs join a Ray cluster, and Ray's logging in their processes."""

from __future__ import annotations

import logging
import os

import ray


def connect(log_level: str) -> None:
    """Join the cluster at RAY_ADDRESS (or start a local one) unless this
    process already has: the one way in of the training, sweep and evaluation
    jobs.

    log_level: --ray-log-level ("DEBUG" | "INFO" | "WARNING" | "ERROR"), set
    through Ray's documented logging settings: its INFO lines (every report,
    every Ray Data execution) stay off unless asked for. RAY_DATA_LOG_LEVEL
    reaches a local cluster's processes through their environment. Ray Data's
    progress bars are turned off: the job prints its own progress lines."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", log_level)
        ray.init(address=os.environ.get("RAY_ADDRESS"), logging_config=ray.LoggingConfig(log_level=log_level))
        logging.getLogger("cgc_ray").setLevel(logging.INFO)  # the job's own lines stay
    ray_log_level(log_level)
    ray.data.DataContext.get_current().enable_progress_bars = False


def ray_log_level(level: str) -> None:
    """--ray-log-level for Ray Data in this process. Ray Data also warns, once
    per process, that progress bars are off: the job turns them off itself
    (its progress lines replace them), so that notice shows at INFO or DEBUG only."""
    logging.getLogger("ray.data").setLevel(level)
    quiet = logging.getLevelName(level) >= logging.WARNING
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR if quiet else level)
