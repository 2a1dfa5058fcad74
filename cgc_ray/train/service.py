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
from collections.abc import Sequence

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..data.embedded import DATASETS as EMBEDDED
from ..data.embedded import embedded_root
from ..data.indexers import cache_uri, load_or_build
from ..data.manifest import Manifest
from ..data.manifest import read as read_manifest
from ..data.pipeline import DataSettings, data_config, open_ledger, too_many_bad_images, train_dataset, val_dataset
from ..data.storage import StorageOptions, exists, file_info, list_dir, read_bytes, resolve, split_uri, write_bytes
from ..evaluation.run_report import explain_checkpoint
from .checkpoint import STATE
from .config import DATA_CPUS, ConfigError, TrainConfig, check, comparable
from .model import build_model
from .loop import NoTrainingBatch, train_loop
from .cluster import connect
from .watchdog import Watchdog, open_progress

log = logging.getLogger(__name__)


def run(cfg: TrainConfig, callbacks: Sequence[ray.train.UserCallback] = ()) -> dict:
    """Train; returns (and stores next to the checkpoints) the run summary.

    callbacks: extra Ray Train `UserCallback`s, run in the Train controller
    (experiment trackers; the recovery tests kill a worker from one). Every
    report's per-worker metrics carry that worker's "pid".
    Raises UserError subclasses (ConfigError, NoTrainingBatch, too many bad
    images) for what the user can fix; Ray's TrainingFailedError when the
    workers fail more than --max-failures times."""
    check(cfg)
    storage = StorageOptions(endpoint_url=cfg.s3_endpoint, region=cfg.s3_region)
    if cfg.data and cfg.dataset not in EMBEDDED and not _readable(cfg.data, storage):
        raise ConfigError(f"--data {cfg.data} does not exist or cannot be read")
    if cfg.weights:
        cfg.weights = check_weights(cfg.weights, cfg.arch, storage)
    check_resume(cfg, storage)
    connect(cfg.ray_log_level)
    resources = ray.cluster_resources()
    check(cfg, cluster_gpus=resources.get("GPU", 0.0), cluster_cpus=resources.get("CPU", 0.0))

    train_m, train_uri = _manifest(cfg, cfg.train_split, storage, cfg.train_manifest)
    val_m, val_uri = _manifest(cfg, cfg.val_split, storage, cfg.val_manifest)
    if val_m.classes != train_m.classes:
        raise ConfigError(f"{cfg.val_split} and {cfg.train_split} splits have different classes")
    steps_per_epoch = len(train_m) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_m)} training images")

    settings = DataSettings(image_size=cfg.image_size, resize_size=cfg.resize_size, seed=cfg.seed,
                            decode_batch=cfg.decode_batch, max_bad_images=cfg.bad_image_limit(len(train_m)),
                            object_store_limit=int(cfg.object_store_limit_gb * 2**30) if cfg.object_store_limit_gb else None,
                            storage=storage, ledger=f"cgc-bad-images-{cfg.name}", gpu_decode=cfg.gpu_decode,
                            deterministic=cfg.deterministic)
    write_config(cfg, storage)
    ledger = open_ledger(settings.ledger)
    progress_name = f"cgc-progress-{cfg.name}"
    fs, run_root = resolve(cfg.storage_path, storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": cfg.to_dict(), "classes": train_m.classes,
                           "steps_per_epoch": steps_per_epoch, "storage": storage, "ledger": settings.ledger,
                           "max_bad_images": settings.max_bad_images,
                           "run_uri": _run_uri(cfg), "progress": progress_name},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})},
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(name=cfg.name, storage_path=run_root, storage_filesystem=fs, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             logging_config=ray.train.LoggingConfig(log_level=cfg.ray_log_level)),
        datasets={"train": train_dataset(train_uri, cfg.objective.recipe, settings),
                  **{f"val_{k}": val_dataset(val_uri, settings, (k, cfg.num_workers)) for k in range(cfg.num_workers)}},
        dataset_config=data_config(settings),
    )
    print(f"run {cfg.name!r} (preset {cfg.preset or 'paper'}): {cfg.arch} {cfg.objective.recipe} "
          f"(lambda {cfg.objective.lam}, tau {cfg.objective.tau}) on "
          f"{len(train_m)} {cfg.dataset} images, {cfg.num_workers} workers, {cfg.epochs} epochs x "
          f"{steps_per_epoch} steps; storage {_run_uri(cfg)}", flush=True)
    started = time.time()
    progress = open_progress(progress_name)  # the watchdog's; killed when fit ends
    request = {"workers": cfg.num_workers, "cpus_per_worker": cfg.cpus_per_worker, "data_cpus": DATA_CPUS,
               "gpus_per_worker": cfg.gpus_per_worker if cfg.use_gpu else 0}
    try:
        with Watchdog(progress, cfg.name, request, cfg.stall_seconds):
            result = trainer.fit()
    except Exception as e:
        bad, limit = ray.get(ledger.summary.remote()), settings.max_bad_images
        if limit is not None and bad["skipped_images"] > limit:
            raise too_many_bad_images(bad, limit) from None  # one clear line, not the workers' trace
        if NoTrainingBatch.__name__ in str(e):
            raise NoTrainingBatch(f"an epoch of run {cfg.name!r} trained on no batch: none of its "
                                  f"{len(train_m)} training images could be made into a batch of "
                                  f"{cfg.batch_size // cfg.num_workers} per worker ({bad['skipped_images']} "
                                  f"unreadable, e.g. {bad['examples'][:1]})") from None
        raise
    finally:
        ray.kill(progress)
    kept = [ckpt.path.rstrip("/").rsplit("/", 1)[-1] for ckpt, _ in result.best_checkpoints or []]
    if kept and (orphans := prune_checkpoints(_run_uri(cfg), kept, storage)):
        log.warning("removed %d checkpoint folder(s) that a failed attempt left unregistered: %s (--keep-checkpoints "
                    "%d keeps %s)", len(orphans), ", ".join(orphans), cfg.keep_checkpoints, ", ".join(kept))
    summary = _summary(cfg, result, train_m, steps_per_epoch, time.time() - started,
                       ray.get(ledger.summary.remote()))
    summary.update(train_manifest=train_uri, val_manifest=val_uri)
    write_bytes(f"{_run_uri(cfg)}/summary.json", json.dumps(summary, indent=1).encode(), storage)
    summary.update(_explain(cfg, summary["checkpoint"], val_uri, storage))
    write_bytes(f"{_run_uri(cfg)}/summary.json", json.dumps(summary, indent=1).encode(), storage)
    print(f"checkpoints: {summary['checkpoint']}\nsummary: {_run_uri(cfg)}/summary.json\n"
          f"metrics: {_run_uri(cfg)}/metrics.jsonl (a line per epoch); live as Prometheus ray_cgc_* "
          "series on every node's Ray metrics port", flush=True)
    if summary.get("heatmaps"):
        print(f"heatmaps: {summary['heatmaps']} (Grad-CAM of the true class on {cfg.figure_images} val images)")
    print(final_line(summary), flush=True)
    return summary


def final_line(summary: dict) -> str:
    """The job's last line: what a reader checks first."""
    ch = summary.get("val_content_heatmap")
    ch_text = (f"Content Heatmap {ch:.2f}% ({summary['val_ch_images']} images with boxes)" if ch is not None
               else "Content Heatmap not measured (no validation boxes, or --explain-images 0)")
    return (f"final: val top-1 {summary['val_top1']:.2f}% ({summary.get('val_images', 0)} images), {ch_text}, "
            f"val CGC loss {summary['val_cgc_loss']:.4f}")


def _explain(cfg: TrainConfig, checkpoint: str | None, val_uri: str, storage: StorageOptions) -> dict:
    """Validation Content Heatmap and heatmaps.png of the final checkpoint, in
    a task with one worker's resources (a GPU with --use-gpu)."""
    if not cfg.explain_images or checkpoint is None:
        return {}
    task = ray.remote(explain_checkpoint).options(num_cpus=cfg.cpus_per_worker,
                                                  num_gpus=cfg.gpus_per_worker if cfg.use_gpu else 0)
    try:
        return ray.get(task.remote(checkpoint, val_uri, _run_uri(cfg), image_size=cfg.image_size,
                                   max_images=cfg.explain_images, figure_images=cfg.figure_images, storage=storage))
    except Exception as e:  # the trained run stands; its figures can be made again with jobs/evaluate.py
        log.error("the end-of-run Content Heatmap and heatmaps.png failed (%s); the checkpoint and summary.json "
                  "are written, jobs/evaluate.py --checkpoint %s scores it", e, checkpoint)
        return {"explain_error": str(e)}


# Options a resumed run may change: how long it trains, where and how it runs, how it logs and
# recovers; anything else (the model, objective, data, optimisation) would make one run out of two.
RESUMABLE_CHANGES = {
    "epochs", "max_failures", "log_every_steps", "ray_log_level", "explain_images", "figure_images",
    "keep_checkpoints", "checkpoint_every_steps", "s3_endpoint", "s3_region", "reindex", "manifest_dir",
    "max_bad_images", "num_workers", "use_gpu", "gpus_per_worker", "cpus_per_worker", "share_gpus",
    "placement_strategy", "autoscaling", "gpu_decode", "decode_batch", "object_store_limit_gb", "val_batches",
    "stall_seconds", "preset", "deterministic",
}


def check_resume(cfg: TrainConfig, storage: StorageOptions) -> None:
    """A run continued under its name is the same run: once it has a
    checkpoint, compare with the configuration stored when it started
    (<run>/config.json) and refuse other options, naming them. Also makes
    sure the run's folder can be written, before Ray starts."""
    run = _run_uri(cfg)
    try:
        stored = json.loads(read_bytes(f"{run}/config.json", storage)) if _has_checkpoint(run, storage) else None
    except OSError:
        stored = None
    if stored is not None:
        stored, now = comparable(stored), cfg.to_dict()
        changed = sorted(k for k, v in now.items() if k not in RESUMABLE_CHANGES and k in stored and stored[k] != v)
        if changed:
            diff = ", ".join(f"--{k.replace('_', '-')} {stored[k]} -> {now[k]}" for k in changed)
            raise ConfigError(f"run {cfg.name!r} in {cfg.storage_path} was started with other options ({diff}); "
                              "a run continues only with the model, objective, data and optimisation options it "
                              "started with. Start a new run with another --name")
    try:
        fs, path = resolve(run, storage)
        fs.create_dir(path, recursive=True)
    except OSError as e:
        raise ConfigError(f"--storage-path {cfg.storage_path}: cannot write there ({e})") from None


def write_config(cfg: TrainConfig, storage: StorageOptions) -> None:
    """<run>/config.json, as the run (re)starts training: what a resumed run is compared with."""
    try:
        write_bytes(f"{_run_uri(cfg)}/config.json", json.dumps(cfg.to_dict(), indent=1).encode(), storage)
    except OSError as e:
        raise ConfigError(f"--storage-path {cfg.storage_path}: cannot write there ({e})") from None


def prune_checkpoints(run: str, kept: list[str], storage: StorageOptions) -> list[str]:
    """Delete the run's `checkpoint_*` folders other than `kept` (folder names
    Ray Train keeps under --keep-checkpoints): a worker that uploaded a
    checkpoint just before an attempt failed leaves one Ray Train never
    registered, so never deletes. Called once the run has finished. Returns
    the names removed."""
    fs, path = resolve(run, storage)
    orphans = sorted(i.base_name for i in list_dir(run, storage)
                     if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
                     and i.base_name not in kept)
    for name in orphans:
        fs.delete_dir(f"{path}/{name}")
    return orphans


def _has_checkpoint(run: str, storage: StorageOptions) -> bool:
    try:
        return any(i.base_name.startswith("checkpoint_") for i in list_dir(run, storage))
    except OSError:
        return False


def check_weights(uri: str, arch: str, storage: StorageOptions) -> str:
    """The state dict --weights names, checked to load weights-only and to fit
    --arch before Ray starts: a file, or a project checkpoint folder (its
    state.pt). Returns the file's URI."""
    folder_state = f"{uri.rstrip('/')}/{STATE}"
    if not _is_file(uri, storage) and _is_file(folder_state, storage):
        uri = folder_state
    try:
        build_model(arch, 1000, uri, storage)  # head shapes aside, every tensor must fit
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"--weights {uri}: {e}") from None
    return uri


def _is_file(uri: str, storage: StorageOptions) -> bool:
    try:
        return file_info(uri, storage).type == pafs.FileType.File
    except OSError:
        return False


def _readable(uri: str, storage: StorageOptions) -> bool:
    try:
        return exists(uri, storage)
    except OSError:
        return False


def _manifest(cfg: TrainConfig, split: str, storage: StorageOptions, given: str | None = None) -> tuple[Manifest, str]:
    if given:  # a manifest made elsewhere (a few-shot episode, a label split): read as is
        try:
            return read_manifest(given, storage), given
        except FileNotFoundError:
            raise ConfigError(f"the {split} manifest {given}: no such file") from None
    root = embedded_root(cfg.dataset, cfg.data) if cfg.dataset in EMBEDDED else cfg.data
    where = cache_uri(cfg.manifest_dir, cfg.dataset, root, split) if cfg.manifest_dir else None
    return load_or_build(cfg.dataset, root, split, where, storage, rebuild=cfg.reindex)


def _run_uri(cfg: TrainConfig) -> str:
    scheme, path = split_uri(cfg.storage_path)
    return f"{scheme}://{path}/{cfg.name}" if scheme else os.path.join(path, cfg.name)


def _summary(cfg, result, train_m, steps_per_epoch, seconds, bad) -> dict:
    metrics = dict(result.metrics or {})
    ckpt = result.checkpoint
    return {
        "run": cfg.name, "config": cfg.to_dict(), "lambda": cfg.objective.lam,
        "lr": cfg.effective_lr, "train_images": len(train_m), "num_classes": len(train_m.classes),
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": metrics.get("epoch"), "global_step": metrics.get("global_step"),
        "val_top1": metrics.get("val_top1", float("nan")), "val_top5": metrics.get("val_top5"),
        "val_cgc_loss": metrics.get("val_cgc_loss", float("nan")), "val_images": metrics.get("val_images"),
        "train_images_per_s_rank0": metrics.get("train_images_per_s"),
        "data_wait_fraction_rank0": metrics.get("data_wait_fraction"), "params_checksums": metrics.get("params_checksums"), "nodes": metrics.get("nodes"),
        "wall_seconds": round(seconds, 1), "checkpoint": _ckpt_uri(cfg, ckpt), **bad,
    }


def _ckpt_uri(cfg: TrainConfig, ckpt) -> str | None:
    if ckpt is None:
        return None
    scheme, _ = split_uri(cfg.storage_path)
    return f"{scheme}://{ckpt.path}" if scheme else ckpt.path
