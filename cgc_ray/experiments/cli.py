"""What the sweep jobs share: their common flags, the parsed request, the base
training configuration, the baseline/CGC pair, and the data subsets they write
before the sweep starts.

A job's own flags (the grid, --name, --storage-path, CH and resource flags)
are parsed here; every other flag is a training option handed to
`cgc_ray.train.config.parse` (any TrainConfig option, or `--config x.yaml`),
so `--epochs 1 --arch resnet50 --weights s3://...` work as in jobs/imagenet.py.
Parsing touches neither storage nor Ray: `parse` checks a command line alone
(the Kubernetes manifests' entrypoints are checked with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..data.embedded import DATASETS as EMBEDDED
from ..data.embedded import embedded_root
from ..data.indexers import cache_uri, load_or_build
from ..data.manifest import read as read_manifest
from ..data.manifest import write as write_manifest
from ..data.storage import StorageOptions
from ..evaluation.content_heatmap import PROTOCOLS
from ..train import config
from ..train.config import TrainConfig
from . import episodes, runner
from .runner import Sweep

# The no-argument runs: the embedded set on a laptop, a few minutes a sweep.
TINY = dict(image_size=64, resize_size=73, epochs=1, batch_size=16, num_workers=1, cpus_per_worker=0.5,
            val_batch_size=16, val_batches=4, log_every_steps=10)


def parser(description: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Every other flag is a training option (python jobs/imagenet.py --help).")
    p.add_argument("--name", default=name, help="sweep name; a re-run with the same name and storage resumes it")
    p.add_argument("--storage-path", default=os.path.abspath("runs"), help="local folder or s3:// prefix")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs of one trial, over its workers; a fraction (0.25) lets trials share a GPU; 0: CPU")
    p.add_argument("--max-concurrent-trials", type=int,
                   help="default: what the cluster's CPUs/GPUs allow (a running trial needs a free CPU for its input)")
    p.add_argument("--ch-images", type=int, help="validation images with boxes scored for CH (default 500; 64 "
                   "on the embedded set)")
    p.add_argument("--ch-short-side", type=int, help="CH input short side (default 448, the authors'; 128 on the "
                   "embedded set)")
    p.add_argument("--ch-protocol", default="resize", choices=PROTOCOLS)
    p.add_argument("--table-only", action="store_true", help="rewrite the tables from stored results; run nothing")
    return p


@dataclass
class Request:
    """A sweep job's command line: its own flags, the training flags, and the
    base training configuration they give."""
    args: argparse.Namespace
    train_argv: list[str]
    base: TrainConfig
    preset: dict | None = None            # the job's training defaults off and on the embedded sets
    embedded_preset: dict = field(default_factory=lambda: TINY)
    setup: list[Callable[[], None]] = field(default_factory=list)  # run before the trials (runner.run_sweep)

    @property
    def sweep(self) -> Sweep:
        return Sweep(self.args.name, self.args.storage_path,
                     StorageOptions(endpoint_url=self.base.s3_endpoint, region=self.base.s3_region))


def parse_request(p: argparse.ArgumentParser, argv: list[str] | None, preset: dict | None = None,
                  embedded_preset: dict = TINY) -> Request:
    """The command line, its training options checked (each trial is checked again with its grid point)."""
    args, train_argv = p.parse_known_args(argv)
    args.storage_path = config.absolute_paths({"storage_path": args.storage_path}, ("storage_path",))["storage_path"]
    base = with_gpus(train_config(train_argv, preset, embedded_preset), args.gpus_per_trial)
    config.check(base)
    return Request(args, train_argv, base, preset, embedded_preset)


def run_request(req: Request, layouts: dict[str, Callable], trials: Callable[[Request, Sweep], list[runner.TrialSpec]]) -> int:
    """Runs (or resumes) the sweep of `trials(req, sweep)`, or with --table-only
    only rewrites its tables; returns the number of failed trials."""
    sw = req.sweep
    if req.args.table_only:
        return runner.run_sweep(sw, [], layouts, table_only=True)
    specs = trials(req, sw)
    return runner.run_sweep(sw, specs, layouts, max_concurrent=req.args.max_concurrent_trials, setup=req.setup)


def dataset_configs(req: Request) -> Iterator[tuple[str, TrainConfig]]:
    """(name, training config) for each set of --datasets name=root,..."""
    for name, root in datasets(req.args.datasets):
        argv = [*req.train_argv, "--dataset", name, *(["--data", root] if root else [])]
        yield name, with_gpus(train_config(argv, req.preset, req.embedded_preset), req.args.gpus_per_trial)


def methods(cfg: TrainConfig, lam: float) -> list[tuple[str, str, float | None]]:
    """The pair every table compares, as (method, recipe, λ): cross-entropy
    alone, and CGC with the run's recipe (official unless one was given)."""
    recipe = cfg.objective.recipe
    return [("baseline", "baseline", None), ("cgc", recipe if recipe != "baseline" else "official", lam)]


def add_subset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-per-class", type=int,
                   help="train on this many images per class of the training split (a seeded subset, for quick checks)")


def floats(text: str, option: str) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]; ConfigError naming `option` otherwise."""
    return _numbers(text, option, float)


def ints(text: str, option: str) -> list[int]:
    return _numbers(text, option, int)


def _numbers(text: str, option: str, kind) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise config.ConfigError(f"{option} must be comma-separated {kind.__name__}s, got {text!r}") from None


def datasets(text: str) -> list[tuple[str, str | None]]:
    """"cub=s3://b/CUB_200_2011,flowers=/data/flowers" or "embedded" -> [(name, root)]."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, _, root = item.partition("=")
        out.append((name, root or None))
    return out


def train_config(train_argv: list[str], preset: dict | None = None, embedded_preset: dict = TINY) -> TrainConfig:
    """The training options: on an embedded set `embedded_preset` (over the
    no-argument run's), else `preset`; the user's flags win over either."""
    tiny = config.parse(train_argv).dataset in EMBEDDED
    values = embedded_preset if tiny else (preset or {})
    return config.parse([*_flags(values), *train_argv])


def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        out += ([flag] if v else ["--no-" + flag[2:]]) if isinstance(v, bool) else [flag, str(v)]
    return out


def with_gpus(cfg: TrainConfig, gpus_per_trial: float) -> TrainConfig:
    if gpus_per_trial <= 0:
        return cfg
    return dataclasses.replace(cfg, use_gpu=True, gpus_per_worker=gpus_per_trial / cfg.num_workers)


def fit_batch(cfg: TrainConfig, train_images: int) -> TrainConfig:
    """A global batch no larger than a small training set (an episode), so an
    epoch still takes one step."""
    if cfg.batch_size <= train_images:
        return cfg
    batch = train_images - train_images % cfg.num_workers
    return dataclasses.replace(cfg, batch_size=batch) if batch >= 2 * cfg.num_workers else cfg


def ch_settings(args, cfg: TrainConfig) -> dict:
    tiny = cfg.dataset in EMBEDDED
    return {"images": args.ch_images or (64 if tiny else 500),
            "short_side": args.ch_short_side or (128 if tiny else 448), "protocol": args.ch_protocol}


def manifest(cfg: TrainConfig, split: str, storage: StorageOptions):
    root = embedded_root(cfg.dataset, cfg.data) if cfg.dataset in EMBEDDED else cfg.data
    where = cache_uri(cfg.manifest_dir, cfg.dataset, root, split) if cfg.manifest_dir else None
    return load_or_build(cfg.dataset, root, split, where, storage, rebuild=cfg.reindex)[0]


def per_class_subset(cfg: TrainConfig, sw: Sweep, per_class: int | None, seed: int = 0) -> TrainConfig:
    """Train on `per_class` images of each class of the training set (its
    --train-manifest, else the training split; a quick check of a grid);
    validation stays as it is. None: all."""
    if not per_class:
        return cfg
    pool = read_manifest(cfg.train_manifest, sw.storage) if cfg.train_manifest else manifest(cfg, cfg.train_split, sw.storage)
    ep = episodes.episode(pool, per_class, seed)
    uri = sw.path("subsets", f"{cfg.dataset}-{pool.split}-{per_class}per-class-seed{seed}.parquet")
    write_manifest(ep.train, uri, sw.storage)
    return dataclasses.replace(cfg, train_manifest=uri)
