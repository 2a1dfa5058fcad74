"""The driver of a training run: check the request, index the data, start a
TorchTrainer on the cluster, write the summary.

Runs are named: a run with the same `name` and `storage_path` as an earlier
one continues from its latest checkpoint (Ray Train restores the run's state
from storage), and worker or node failures are retried from the latest
checkpoint up to `max_failures` times.
"""

from __future__ import annotations

import json
import logging
import os
import time

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..data.embedded import ensure_embedded
from ..data.indexers import load_or_build
from ..data.manifest import Manifest
from ..data.manifest import read as read_manifest
from ..data.pipeline import DataSettings, data_config, open_ledger, too_many_bad_images, train_dataset, val_dataset
from ..data.storage import StorageOptions, exists, resolve, split_uri, write_bytes
from .config import ConfigError, TrainConfig, check
from .loop import train_loop

log = logging.getLogger(__name__)


def run(cfg: TrainConfig) -> dict:
    """Train; returns (and stores next to the checkpoints) the run summary."""
    check(cfg)
    storage = StorageOptions(endpoint_url=cfg.s3_endpoint, region=cfg.s3_region)
    if cfg.data and cfg.dataset != "embedded" and not _readable(cfg.data, storage):
        raise ConfigError(f"--data {cfg.data} does not exist or cannot be read")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job log shows our progress lines
    check(cfg, cluster_gpus=ray.cluster_resources().get("GPU", 0.0))

    train_m, train_uri = _manifest(cfg, cfg.train_split, storage, cfg.train_manifest)
    val_m, val_uri = _manifest(cfg, cfg.val_split, storage, cfg.val_manifest)
    if val_m.classes != train_m.classes:
        raise ConfigError(f"{cfg.val_split} and {cfg.train_split} splits have different classes")
    steps_per_epoch = len(train_m) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_m)} training images")

    settings = DataSettings(image_size=cfg.image_size, resize_size=cfg.resize_size, seed=cfg.seed,
                            decode_batch=cfg.decode_batch, max_bad_images=cfg.max_bad_images,
                            object_store_limit=int(cfg.object_store_limit_gb * 2**30) if cfg.object_store_limit_gb else None,
                            storage=storage, ledger=f"cgc-bad-images-{cfg.name}", gpu_decode=cfg.gpu_decode)
    ledger = open_ledger(settings.ledger)
    fs, run_root = resolve(cfg.storage_path, storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": cfg.to_dict(), "classes": train_m.classes,
                           "steps_per_epoch": steps_per_epoch, "storage": storage, "ledger": settings.ledger,
                           "run_uri": _run_uri(cfg),
                           "fault": os.environ.get("CGC_RAY_TEST_KILL")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})},
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(name=cfg.name, storage_path=run_root, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        datasets={"train": train_dataset(train_uri, cfg.recipe, settings), "val": val_dataset(val_uri, settings)},
        dataset_config=data_config(settings),
    )
    print(f"run {cfg.name!r}: {cfg.arch} {cfg.recipe} (lambda {cfg.effective_lam}, tau {cfg.tau}) on "
          f"{len(train_m)} {cfg.dataset} images, {cfg.num_workers} workers, {cfg.epochs} epochs x "
          f"{steps_per_epoch} steps; storage {_run_uri(cfg)}", flush=True)
    started = time.time()
    try:
        result = trainer.fit()
    except Exception:
        bad = ray.get(ledger.summary.remote())
        if cfg.max_bad_images is not None and bad["skipped_images"] > cfg.max_bad_images:
            raise too_many_bad_images(bad, cfg.max_bad_images) from None  # one clear line, not the workers' trace
        raise
    summary = _summary(cfg, result, train_m, steps_per_epoch, time.time() - started,
                       ray.get(ledger.summary.remote()))
    summary.update(train_manifest=train_uri, val_manifest=val_uri)
    write_bytes(f"{_run_uri(cfg)}/summary.json", json.dumps(summary, indent=1).encode(), storage)
    print(f"checkpoints: {summary['checkpoint']}\nsummary: {_run_uri(cfg)}/summary.json\n"
          f"metrics: {_run_uri(cfg)}/metrics.jsonl (a line per epoch); live as Prometheus ray_cgc_* "
          "series on every node's Ray metrics port\n"
          f"final: val top-1 {summary['val_top1']:.2f}%, val CGC loss {summary['val_cgc_loss']:.4f}", flush=True)
    return summary


def _readable(uri: str, storage: StorageOptions) -> bool:
    try:
        return exists(uri, storage)
    except OSError:
        return False


def _manifest(cfg: TrainConfig, split: str, storage: StorageOptions, given: str | None = None) -> tuple[Manifest, str]:
    if given:  # a manifest made elsewhere (a few-shot episode, a label split): read as is
        return read_manifest(given, storage), given
    where = f"{cfg.manifest_dir.rstrip('/')}/{cfg.dataset}-{split}.parquet" if cfg.manifest_dir else None
    root = cfg.data or (str(ensure_embedded()) if cfg.dataset == "embedded" else "")
    return load_or_build(cfg.dataset, root, split, where, storage)


def _run_uri(cfg: TrainConfig) -> str:
    scheme, path = split_uri(cfg.storage_path)
    return f"{scheme}://{path}/{cfg.name}" if scheme else os.path.join(path, cfg.name)


def _summary(cfg, result, train_m, steps_per_epoch, seconds, bad) -> dict:
    metrics = dict(result.metrics or {})
    ckpt = result.checkpoint
    return {
        "run": cfg.name, "config": cfg.to_dict(), "lambda": cfg.effective_lam,
        "lr": cfg.effective_lr, "train_images": len(train_m), "num_classes": len(train_m.classes),
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": metrics.get("epoch"), "global_step": metrics.get("global_step"),
        "val_top1": metrics.get("val_top1", float("nan")), "val_top5": metrics.get("val_top5"),
        "val_cgc_loss": metrics.get("val_cgc_loss", float("nan")),
        "train_images_per_s_rank0": metrics.get("train_images_per_s"),
        "data_wait_fraction_rank0": metrics.get("data_wait_fraction"), "params_checksums": metrics.get("params_checksums"), "nodes": metrics.get("nodes"),
        "wall_seconds": round(seconds, 1), "checkpoint": _ckpt_uri(cfg, ckpt), **bad,
    }


def _ckpt_uri(cfg: TrainConfig, ckpt) -> str | None:
    if ckpt is None:
        return None
    scheme, _ = split_uri(cfg.storage_path)
    return f"{scheme}://{ckpt.path}" if scheme else ckpt.path
