"""The evaluation job's request: EvalConfig, its checks, and its command line
(each flag generated from a field, so every default is stated once, here)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields

from ..data.indexers import default_dataset
from ..data.storage import StorageOptions
from ..errors import UserError
from ..train.config import LOG_LEVELS, absolute_paths
from .insertion import STEP

CHOICES = ("top1", "ch", "iauc", "cgc")  # what --metrics may ask for (top1 also gives top-5)
CH_PROTOCOLS = ("resize", "center_crop")


def _opt(default, help: str, **flag):
    return field(default=default, metadata={"help": help, **flag})


class EvalError(UserError):
    """A request the job cannot run (bad flag, unusable checkpoint)."""


@dataclass(frozen=True)
class EvalConfig:
    checkpoints: tuple[str, ...] = _opt((), "checkpoint folder (local or s3://); repeat", flag="--checkpoint")
    labels: tuple[str, ...] = _opt((), "table label per --checkpoint, in order; repeat", flag="--label")
    dataset: str = _opt("embedded", "embedded, imagenet (the default with --data), unrel, or another indexer")
    data: str | None = _opt(None, "data root (local or s3://); none: the embedded set")
    split: str = _opt("val", "the split to evaluate (test for unrel unless given)")
    manifest: str | None = _opt(None, "where the manifest is cached (default: next to the data)")
    out: str = _opt("eval", "folder or s3:// prefix for the tables and figures")
    metrics: tuple[str, ...] = _opt(CHOICES, "comma list of " + ",".join(CHOICES))
    ch_protocol: str = _opt("resize", "the authors' (short side, whole image) or center_crop", choices=CH_PROTOCOLS)
    short_side: int = _opt(448, "CH input short side (resize protocol), pixels")
    iauc_limit: int | None = _opt(None, "IAUC on the first N manifest rows only (it costs 29 forwards an image)")
    iauc_bn_train: bool = _opt(False, "the authors' IAUC maps: BatchNorm in train mode, per batch")
    iauc_step: int = _opt(STEP, "pixels inserted per step (RISE: 224 * 8, 29 canvases)")
    iauc_max_batch: int = _opt(1024, "insertion canvases per forward (a batch of 32 images makes 928)")
    limit: int | None = _opt(None, "evaluate the first N manifest rows")
    figures: int = _opt(4, "random figure images (seeded); 0: no figure")
    images: tuple[str, ...] = _opt((), "comma list of figure images (URIs, or names they end with)")
    seed: int = _opt(0, "T of the CGC loss (per image) and the random figure images")
    batch_size: int = _opt(32, "images per metric batch = CGC-loss batch (31 negatives)")
    decode_batch: int = _opt(32, "rows per decode task")
    concurrency: int = _opt(1, "metric actors")
    use_gpu: bool = _opt(False, "one GPU per metric actor")
    cpus_per_actor: float = _opt(1.0, "CPUs per metric actor")
    threads: int | None = _opt(None, "torch threads per actor (default: its CPUs)")
    skip_bad: bool = _opt(False, "skip checkpoints that cannot be evaluated and, for CH, images without a usable "
                          "box (named in the log and results.json) instead of failing")
    s3_endpoint: str | None = _opt(None, "S3-compatible endpoint URL")
    s3_region: str | None = _opt(None, "S3 region")
    ray_log_level: str = _opt("WARNING", "Ray's own log lines from the job's processes (INFO shows Ray Data's "
                              "plans)", choices=LOG_LEVELS)

    def storage(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.s3_endpoint, region=self.s3_region)


def check(cfg: EvalConfig) -> None:
    if not cfg.checkpoints:
        raise EvalError("give at least one --checkpoint")
    if cfg.labels and len(cfg.labels) != len(cfg.checkpoints):
        raise EvalError(f"{len(cfg.labels)} --label for {len(cfg.checkpoints)} --checkpoint")
    if unknown := set(cfg.metrics) - set(CHOICES):
        raise EvalError(f"unknown metrics {sorted(unknown)}; known: {','.join(CHOICES)}")
    if cfg.ch_protocol not in CH_PROTOCOLS:
        raise EvalError(f"--ch-protocol must be one of {CH_PROTOCOLS}, got {cfg.ch_protocol!r}")
    if cfg.iauc_max_batch < 1:
        raise EvalError(f"--iauc-max-batch must be >= 1, got {cfg.iauc_max_batch}")
    if "cgc" in cfg.metrics and cfg.batch_size < 2:
        raise EvalError("the CGC loss needs --batch-size >= 2 (the other images are the negatives)")


def parse(argv=None) -> EvalConfig:
    """EvalConfig from the command line: a flag per field, defaults from the fields."""
    p = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate CGC checkpoints: "
                                "Top-1, Content Heatmap, CGC loss, insertion AUC, Grad-CAM figures.")
    for f in fields(EvalConfig):
        _add_flag(p, f)
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    for key in ("metrics", "images"):  # comma lists
        if key in given:
            given[key] = tuple(v.strip() for v in given[key].split(",") if v.strip())
    for key in ("checkpoints", "labels"):  # repeated flags
        given[key] = tuple(given.get(key, ()))
    given["dataset"] = default_dataset(given.get("dataset"), given.get("data"))
    given["split"] = given.get("split") or ("test" if given["dataset"] == "unrel" else "val")
    cfg = EvalConfig(**given)
    paths = absolute_paths({k: getattr(cfg, k) for k in ("data", "manifest", "out")}, ("data", "manifest", "out"))
    checkpoints = tuple(absolute_paths({"c": c}, ("c",))["c"] for c in cfg.checkpoints)
    return dataclasses.replace(cfg, checkpoints=checkpoints, **paths)


def _add_flag(p: argparse.ArgumentParser, f) -> None:
    meta = dict(f.metadata)
    flag, help_ = meta.pop("flag", "--" + f.name.replace("_", "-")), meta.pop("help")
    kind = str(f.type).split("|")[0].strip()
    if f.name in ("checkpoints", "labels"):
        p.add_argument(flag, dest=f.name, action="append", required=f.name == "checkpoints", help=help_)
    elif kind == "bool":
        p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
    else:
        shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        p.add_argument(flag, dest=f.name, default=None, help=help_ + (f" (default: {shown})" if shown not in (None, "") else ""),
                       type={"int": int, "float": float}.get(kind, str), **meta)
