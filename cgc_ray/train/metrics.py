"""Training telemetry: Prometheus metrics through Ray's metrics system (scraped
on every node's Ray metrics port, names prefixed `ray_cgc_`), and a progress
line in the job log."""

from __future__ import annotations

import sys
import time

import torch
from ray.util.metrics import Counter, Gauge

GAUGES = {
    "images_per_second": "Training images per second on this worker",
    "step_seconds": "Wall time of the last training step",
    "data_wait_seconds": "Time the last step waited for its batch",
    "data_wait_fraction": "Share of step time spent waiting for data, since the last log line",
    "loss": "Total loss (CE + lambda * CGC) of the last step",
    "ce_loss": "Cross-entropy part of the last step's loss",
    "cgc_loss": "CGC (contrastive Grad-CAM consistency) part of the last step's loss",
    "learning_rate": "Current learning rate",
    "gpu_memory_bytes": "Peak GPU memory allocated by this worker",
    "epoch": "Epoch in progress",
}
TAGS = ("run", "rank")


class Telemetry:
    """Per-worker meters: every `every` steps the gauges are set (averages over
    those steps) and rank 0 prints a progress line."""

    def __init__(self, run: str, rank: int, every: int, steps_per_epoch: int, epochs: int):
        self.tags = {"run": run, "rank": str(rank)}
        self.gauges = {k: Gauge(f"cgc_{k}", description=d, tag_keys=TAGS) for k, d in GAUGES.items()}
        self.images = Counter("cgc_images_total", description="Training images processed", tag_keys=TAGS)
        self.rank, self.every = rank, every
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.window = {"step": 0.0, "wait": 0.0, "images": 0, "steps": 0}
        self.epoch_total = dict(self.window)

    def end_epoch(self) -> dict:
        """Throughput and data-wait share of this worker over the epoch's steps."""
        t, self.epoch_total = self.epoch_total, {"step": 0.0, "wait": 0.0, "images": 0, "steps": 0}
        return {"train_images_per_s": t["images"] / max(t["step"], 1e-9),
                "data_wait_fraction": t["wait"] / max(t["step"], 1e-9)}

    def step(self, *, epoch, step_in_epoch, images, step_s, wait_s, parts, lr) -> None:
        """`parts` (loss, ce, cgc) stay device tensors: they are read back (a
        host sync) only on the steps that log, once every `every` steps."""
        self.images.inc(images, tags=self.tags)
        for w in (self.window, self.epoch_total):
            w["step"] += step_s
            w["wait"] += wait_s
            w["images"] += images
            w["steps"] += 1
        w = self.window
        if step_in_epoch % self.every == 0 or step_in_epoch == self.steps_per_epoch:
            loss, ce, cgc = torch.stack(parts).detach().float().cpu().tolist()
            frac = w["wait"] / max(w["step"], 1e-9)
            values = {"images_per_second": w["images"] / max(w["step"], 1e-9), "step_seconds": step_s,
                      "data_wait_seconds": wait_s, "data_wait_fraction": frac, "loss": loss, "ce_loss": ce,
                      "cgc_loss": cgc, "learning_rate": lr, "epoch": epoch}
            if torch.cuda.is_available():
                values["gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
            for k, v in values.items():
                self.gauges[k].set(float(v), tags=self.tags)
            if self.rank == 0:
                left = (self.epochs - epoch - 1) * self.steps_per_epoch + self.steps_per_epoch - step_in_epoch
                eta = left * w["step"] / max(w["steps"], 1)
                say(f"epoch {epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps_per_epoch} "
                    f"loss {loss:.4f} (ce {ce:.4f} cgc {cgc:.4f}) lr {lr:.4g} "
                    f"{values['images_per_second']:.1f} img/s/worker, data wait {100 * frac:.0f}%, "
                    f"ETA {_duration(eta)} (training steps)")
            self.window = {"step": 0.0, "wait": 0.0, "images": 0, "steps": 0}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def say(line: str) -> None:
    """One line to the job log. (Not print: Ray Train patches print on its
    workers to also log it, which shows every line twice in the job log.)"""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Stopwatch:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.t = now - self.t, now
        return elapsed
