"""The per-worker training loop run by Ray Train's TorchTrainer (DDP).

Each epoch: the worker's equal shard of the training set, `steps_per_epoch`
steps of the CGC objective (the lr set per step by schedule.py), validation
(top-1/top-5 and the CGC loss on held-out batches of 32, summed over ranks)
and a checkpoint.
With `checkpoint_every_steps`, also mid-epoch checkpoints. A restarted worker
group resumes at the checkpoint's (epoch, step in epoch): the epoch in
progress only runs its remaining steps, so no epoch is lost or counted twice.
Rank 0 also keeps `<run>/metrics.jsonl`, one line per finished epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from ..data.batches import to_device
from ..data.device_decode import decode_views
from ..data.pipeline import DataSettings, record_bad_images
from ..data.storage import read_bytes, write_bytes
from ..errors import UserError
from ..gradcam import CamNet, unwrap
from ..objective import CGCConfig, cgc_objective, heatmap_consistency
from . import checkpoint
from .config import AMP_DTYPES, TrainConfig
from .cluster import ray_log_level
from .metrics import Stopwatch, Telemetry, say
from .model import build_model
from .schedule import build_optimizer, build_scheduler
from .watchdog import Beat


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker's training (TorchTrainer's train_loop_per_worker).

    loop_config: "train" (TrainConfig as a dict), "classes" (list of class
    names), "steps_per_epoch" (int), "storage" (StorageOptions), "ledger" (the
    bad-image ledger actor's name), "max_bad_images" (int or None),
    "run_uri" (where metrics.jsonl goes), "progress" (the watchdog's actor
    name). Trains the CGC objective (`cgc_objective`) under DDP from the
    latest checkpoint if any, validates and reports (with a checkpoint from
    rank 0) every epoch, and every `checkpoint_every_steps` steps. Raises
    NoTrainingBatch when an epoch gets no batch; other errors fail the
    attempt, which Ray Train retries from the latest checkpoint up to
    --max-failures times.
    """
    TrainLoopRunner(loop_config).run()


class TrainLoopRunner:
    """The worker's loop in its parts: setup (__init__), train_epoch, end_epoch
    (validate, log, checkpoint), as in Ray's release/train_tests/benchmark."""

    def __init__(self, loop_config: dict):
        cfg = self.cfg = TrainConfig.from_dict(loop_config["train"])
        self.loop_config, self.steps_per_epoch = loop_config, loop_config["steps_per_epoch"]
        # Ray Train sets a worker's root logger to INFO, and its "Reporting training result" logger is named by
        # its file path, outside the ray.train namespace its LoggingConfig filters: --ray-log-level applies here
        logging.getLogger().setLevel(cfg.ray_log_level)
        ray_log_level(cfg.ray_log_level)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._build_model()
        self.objective = dataclasses.replace(cfg.objective, amp_dtype=AMP_DTYPES[cfg.precision])
        self.opt = build_optimizer(self.model, cfg)
        self.sched = build_scheduler(self.opt, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16")
        self.state = dict(model=self.model, optimizer=self.opt, scheduler=self.sched, scaler=self.scaler)
        self.position = self._resume()
        self.started_at = self.position["global_step"]  # 0, or the checkpoint this worker group resumed from
        self.telemetry = Telemetry(cfg.name, self.rank, cfg.log_every_steps, self.steps_per_epoch, cfg.epochs)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard(f"val_{self.rank}")
        obj = cfg.objective
        self.meta = {"arch": cfg.arch, "classes": loop_config["classes"], "layer": obj.layer,
                     "recipe": obj.recipe, "lam": obj.lam, "tau": obj.tau}
        self.beat = Beat(loop_config.get("progress") if self.rank == 0 else None)  # the driver's watchdog reads it
        ledger = DataSettings(ledger=loop_config.get("ledger"), max_bad_images=loop_config.get("max_bad_images"))
        self.on_bad = functools.partial(record_bad_images, settings=ledger)  # neither the device nor the CPU decodes
        self.cpu_decoded = []  # --gpu-decode: images the device refused, decoded on the CPU instead

    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg.arch, len(self.loop_config["classes"]), cfg.weights, self.loop_config["storage"])
        if cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.net = ray.train.torch.prepare_model(CamNet(model, cfg.objective.layer))
        if cfg.compile:
            self.net = torch.compile(self.net)

    def _resume(self) -> dict:
        """The position of the latest checkpoint (its state loaded), or the start."""
        resumed = ray.train.get_checkpoint()
        if not resumed:
            return {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
        with resumed.as_directory() as d:
            position = checkpoint.load(d, **self.state)
        if self.rank == 0:
            say(f"resuming at epoch {position['epoch'] + 1}, step {position['step_in_epoch']} "
                f"(global step {position['global_step']})")
        return position

    def run(self) -> None:
        self.beat("started", self.position["global_step"], force=True)
        for epoch in range(self.position["epoch"], self.cfg.epochs):
            step, global_step = self.train_epoch(epoch)
            self.end_epoch(epoch, step, global_step)
            self.position = {"epoch": epoch + 1, "step_in_epoch": 0, "global_step": global_step}

    def train_epoch(self, epoch: int) -> tuple[int, int]:
        """The epoch's remaining steps; returns (step in epoch, global step) at its end."""
        cfg, first = self.cfg, self.position["step_in_epoch"]
        torch.manual_seed(cfg.seed + 1000 * epoch + self.rank)
        step, global_step = first, self.position["global_step"]
        self.net.train()
        clock = Stopwatch()
        batches = self.train_shard.iter_batches(batch_size=cfg.batch_size // self.world, drop_last=True,
                                                batch_format="numpy", prefetch_batches=2)
        for raw in batches:
            if step >= self.steps_per_epoch:
                break
            wait = clock.lap()
            out, images = self.train_step(raw)
            step, global_step = step + 1, global_step + 1
            self.beat("training", global_step, force=step == first + 1)  # an epoch's first step at once
            self.telemetry.step(epoch=epoch, step_in_epoch=step, images=images, step_s=wait + clock.lap(),
                                wait_s=wait, parts=(out.loss, out.ce, out.cgc), lr=self.opt.param_groups[0]["lr"])
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 \
                    and step < self.steps_per_epoch:
                self._report({"epoch": epoch, "step_in_epoch": step, "global_step": global_step},
                             (epoch, step, global_step))
            clock.lap()
        _check_steps(epoch, first, step, self.steps_per_epoch, self.rank)
        return step, global_step

    def train_step(self, raw: dict):
        """One optimiser step of the CGC objective on a numpy batch; returns
        (the objective's output, the number of images)."""
        cfg = self.cfg
        if cfg.gpu_decode:
            raw = decode_views(raw, cfg.objective.recipe, cfg.image_size, cfg.resize_size, self.device,
                               on_failure=self.on_bad, on_fallback=self.cpu_decoded.extend)
        batch = to_device(raw, cfg.objective.recipe, self.device, cfg.channels_last)
        out = cgc_objective(self.net, batch, self.objective)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return out, len(raw["label"])

    def end_epoch(self, epoch: int, step: int, global_step: int) -> None:
        """Validate, add the epoch's line to metrics.jsonl, report with a checkpoint."""
        cfg, device = self.cfg, self.device
        self.beat("validating", global_step, force=True)
        metrics = {**self.telemetry.end_epoch(), **validate(self.net, self.val_shard, cfg, self.objective, device)}
        fallbacks = _gather(torch.tensor([len(self.cpu_decoded)], device=device)).sum()
        metrics.update(epoch=epoch + 1, step_in_epoch=step, global_step=global_step,
                       resumed_from_step=self.started_at, lr=self.opt.param_groups[0]["lr"],
                       steps_per_epoch=self.steps_per_epoch, gpu_decode_cpu_fallbacks=int(fallbacks),
                       **rank_views(self.model, ray.get_runtime_context().get_node_id(), device))
        if self.rank == 0:
            say(f"epoch {epoch + 1}/{cfg.epochs} done: val top-1 {metrics['val_top1']:.2f}% "
                f"top-5 {metrics['val_top5']:.2f}% CGC loss {metrics['val_cgc_loss']:.4f}")
            _log_epoch(self.loop_config.get("run_uri"), self.loop_config["storage"], metrics)
        self.beat("checkpointing", global_step, force=True)
        self._report(metrics, (epoch + 1, 0, global_step))
        self.beat("started", global_step, force=True)  # what follows waits for the next epoch's data

    def _report(self, metrics: dict, position: tuple) -> None:
        """Every rank reports (with its process id, which Ray Train callbacks
        may use); rank 0 attaches the checkpoint at `position` (epoch, step in
        epoch, global step)."""
        epoch, step, global_step = position
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if self.rank == 0:
                checkpoint.save(d, epoch=epoch, step_in_epoch=step, global_step=global_step, meta=self.meta,
                                **self.state)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**metrics, "pid": os.getpid()}, checkpoint=ckpt)


class NoTrainingBatch(UserError):
    """An epoch's shard gave not one training batch (every image unreadable or skipped)."""


def _check_steps(epoch: int, first: int, step: int, steps_per_epoch: int, rank: int) -> None:
    """An epoch that ran fewer steps than planned says so; one that ran none fails."""
    if step == first < steps_per_epoch:
        raise NoTrainingBatch(f"NoTrainingBatch: epoch {epoch + 1} ran 0 of {steps_per_epoch - first} steps on rank "
                              f"{rank}: no training batch could be made (unreadable images are skipped)")
    if step < steps_per_epoch and rank == 0:
        say(f"epoch {epoch + 1}: ran {step - first} of {steps_per_epoch - first} steps; the shard ended early "
            "(unreadable images are skipped, see the log)")


def validate(net: nn.Module, shard, cfg: TrainConfig, objective: CGCConfig, device) -> dict:
    """Top-1/top-5 over every validation image of the shard (a last partial
    batch counts) and the CGC loss of each full batch of `val_batch_size`
    (query: the val image, positive: its T view, negatives: the other images
    of its batch), summed over ranks. The sums live on `device`: NCCL reduces
    device tensors only. No image scored gives NaN, not 0 %."""
    inner = unwrap(net)
    inner.eval()
    # Grad-CAM needs gradients unless it has the closed form (what cam="auto" resolves to)
    needs_grad = objective.cam == "autograd" or inner.linear_head() is None
    # images, top-1 hits, top-5 hits, sum of full-batch CGC losses, full batches
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    for i, raw in enumerate(shard.iter_batches(batch_size=cfg.val_batch_size, drop_last=False, batch_format="numpy")):
        if cfg.val_batches is not None and i >= cfg.val_batches:
            break
        b = to_device(raw, "official", device, cfg.channels_last)
        full = len(b["label"]) == cfg.val_batch_size
        with torch.set_grad_enabled(needs_grad and full):
            query, aug = inner(b["image"], b["aug"])
            cgc = (heatmap_consistency(inner, query, aug, b["crop"], b["flip"], tuple(b["image"].shape[-2:]), objective)
                   if full else torch.zeros((), device=device))
        top5 = query[0].detach().topk(min(5, query[0].shape[1]), dim=1).indices
        hits = (top5 == b["label"][:, None]).double()
        totals += torch.stack([torch.ones_like(hits[:, 0]).sum(), hits[:, 0].sum(), hits.amax(1).sum(),
                               cgc.detach().double(), torch.tensor(float(full), dtype=torch.float64, device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    inner.train()
    n, top1, top5, cgc_sum, full_batches = totals.tolist()
    nan = float("nan")
    return {"val_top1": 100 * top1 / n if n else nan, "val_top5": 100 * top5 / n if n else nan,
            "val_cgc_loss": cgc_sum / full_batches if full_batches else nan, "val_images": int(n)}


def _log_epoch(run_uri: str | None, storage, metrics: dict) -> None:
    """Add the epoch's line to <run>/metrics.jsonl, rewritten whole (object
    stores have no append); a line for this or a later epoch, left by an
    attempt that died before its checkpoint, is replaced."""
    if run_uri is None:
        return
    uri = f"{run_uri}/metrics.jsonl"
    try:
        lines = read_bytes(uri, storage).decode().splitlines()
    except OSError:  # the first epoch of the run
        lines = []
    kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] < metrics["epoch"]]
    write_bytes(uri, "".join(line + "\n" for line in [*kept, json.dumps(metrics, default=float)]).encode(), storage)


def rank_views(model: nn.Module, node_id: str, device) -> dict:
    """Every rank's parameter checksum and node, in rank order (the DDP test and
    the logs read them). Gathered as tensors on `device`: NCCL moves device
    tensors only."""
    checksum = torch.tensor([_checksum(model)], dtype=torch.float64, device=device)
    node = torch.tensor(list(bytes.fromhex(node_id)), dtype=torch.uint8, device=device)
    return {"params_checksums": _gather(checksum)[:, 0].tolist(),
            "nodes": [bytes(row).hex() for row in _gather(node).cpu().tolist()]}


def _gather(row: torch.Tensor) -> torch.Tensor:
    """The 1-D `row` of every rank (same length everywhere), stacked in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return row[None]
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows)


def _checksum(model: nn.Module) -> float:
    """A number that differs when any rank's parameters differ (for the DDP test and logs)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))

