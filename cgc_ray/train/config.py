"""Training configuration: the paper's recipes as presets, every value
overridable from a YAML file or the command line, checked before any worker
starts. (Over 300 lines on purpose: every check of a request lives here, in
one place, so that a bad option fails before Ray starts.)"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields

import torch
import torchvision
import yaml

from ..data.embedded import DATASETS as EMBEDDED
from ..data.indexers import default_dataset
from ..errors import UserError
from ..gradcam import CamNet, InPlaceLayer, UnsuitableLayer
from ..objective import CGCConfig, OptionError

PAPER_LAMBDA = {"resnet18": 1.0, "resnet50": 0.5}
DATA_CPUS = 1.0  # a run's Ray Data tasks need a CPU the workers do not hold, or the input never moves
PRECISIONS = ("fp32", "bf16", "fp16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # --ray-log-level
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype per --precision


@dataclass
class TrainConfig:
    preset: str | None = None          # laptop or paper; None: laptop on an embedded set, else paper (flags win)
    # data
    dataset: str = "embedded"          # indexer: embedded, imagenet, cub, folder, aircraft, cars, flowers
    data: str | None = None            # root of the raw data (local path or s3://...); None: embedded cache
    train_split: str = "train"
    val_split: str = "val"
    manifest_dir: str | None = None    # where manifests are cached (default: next to the data)
    reindex: bool = False              # index the data again even where a cached manifest exists
    train_manifest: str | None = None  # a manifest URI used as is (no indexing): an episode, a label split
    val_manifest: str | None = None
    s3_endpoint: str | None = None     # overrides AWS_ENDPOINT_URL(_S3)
    s3_region: str | None = None
    image_size: int = 224
    resize_size: int = 256
    max_bad_images: int = 1000
    max_bad_share: float = 0.1         # ... and at most this share of the training images (a wrong data set)
    object_store_limit_gb: float | None = None
    decode_batch: int = 32
    gpu_decode: bool = False           # decode JPEGs on the workers' GPUs (nvJPEG) instead of the CPUs
    # model
    arch: str = "resnet18"
    weights: str | None = None         # initial weights: local path or s3:// URI (never a hub download)
    # objective: CE + lam * L_CGC (objective.CGCConfig; also --layer, the explained layer). Flat on the
    # command line, in YAML files and stored configs (--lam, --tau, ...). --lam not given: the paper's value
    # for --arch (1.0 / 0.5), 0 for --recipe baseline, resolved when the config is built (None here, or
    # from_dict / with_objective); after a change of arch, set it again with with_objective(lam=None)
    objective: CGCConfig | None = None
    # optimisation (the paper's ImageNet recipe)
    epochs: int = 90
    batch_size: int = 256              # global, over all workers
    lr: float = 0.1                    # at the reference batch; scaled by batch_size / lr_reference_batch
    lr_reference_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epochs: int = 30
    lr_milestones: str | None = None   # epochs where lr *= lr_gamma, e.g. "12,16" (default: every lr_step_epochs)
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0         # linear warm-up, for large global batches (Goyal et al. 2017)
    head_lr: float | None = None       # the new head's own lr at the reference batch (semi-supervised recipe)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False        # Ray Data keeps block order: a rerun on the same cluster repeats the run
    # validation
    val_batch_size: int = 32
    val_batches: int | None = None     # held-out batches per rank per validation (None: all)
    explain_images: int = 1000         # at the end: Content Heatmap over this many val images with boxes (0: off)
    figure_images: int = 16            # ... and heatmaps.png of this many of them
    # scaling
    num_workers: int = 2
    use_gpu: bool = False
    gpus_per_worker: float = 1.0       # a fraction (e.g. 0.25) lets several small runs share a GPU
    autoscaling: bool = False          # the cluster adds GPU nodes on demand: no GPU-count check at submission
    share_gpus: bool = False           # allow --gpus-per-worker < 1 with several workers (ranks may share a GPU)
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"   # or SPREAD, STRICT_PACK, STRICT_SPREAD (Ray placement groups)
    # run
    name: str = "cgc-run"
    storage_path: str = field(default_factory=lambda: os.path.abspath("runs"))
    checkpoint_every_steps: int = 0    # 0: once per epoch only
    keep_checkpoints: int = 3
    max_failures: int = 3
    log_every_steps: int = 10
    ray_log_level: str = "WARNING"     # Ray's own log lines from the job's processes (INFO shows every report)
    stall_seconds: float = 120.0       # log what the run waits for after this long without progress (0: off)

    def __post_init__(self):
        if self.objective is None:
            self.objective = CGCConfig(lam=PAPER_LAMBDA.get(self.arch, 1.0))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From the flat form (flags, YAML, a stored config.json or trial spec):
        the objective's keys (OBJECTIVE_KEYS) build `objective`; a --lam of
        None is the paper's value for --arch, 0 for --recipe baseline. Raises
        ConfigError naming the flag of a bad objective option, or keys no
        TrainConfig option has."""
        values = dict(values)
        options = {k: values.pop(k) for k in OBJECTIVE_KEYS if k in values}
        if "objective" not in values:
            options.setdefault("lam", None)  # the paper's value for the arch
        if unknown := sorted(set(values) - {f.name for f in fields(cls)} - {"objective"}):
            raise ConfigError(f"unknown options {unknown} (a configuration written by another version?)")
        return cls(**values).with_objective(**options)

    def with_objective(self, **options) -> TrainConfig:
        """A copy with these objective options changed (lam=None: the paper's
        value for the arch, 0 for the baseline recipe). Raises ConfigError."""
        if "lam" in options or "recipe" in options:
            recipe = options.get("recipe", self.objective.recipe)
            # a recipe change without a lam: the new recipe's own (0 for the baseline, else the arch's)
            lam = options.get("lam", None if recipe != self.objective.recipe else self.objective.lam)
            if recipe == "baseline" and lam:  # rule of TrainConfig (the core's baseline ignores lam)
                raise ConfigError(f"--recipe baseline trains without the CGC term; drop --lam {lam}")
            options["lam"] = 0.0 if recipe == "baseline" else (
                PAPER_LAMBDA.get(self.arch, 1.0) if lam is None else lam)
        try:
            return dataclasses.replace(self, objective=dataclasses.replace(self.objective, **options))
        except OptionError as e:  # CGCConfig checks the objective's options
            raise ConfigError(f"--{e.field.replace('_', '-')} must be {e.allowed}, got {e.value!r}") from None

    def bad_image_limit(self, train_images: int) -> int | None:
        """Unreadable images allowed: --max-bad-images, and no more than --max-bad-share of the set."""
        limits = [v for v in (self.max_bad_images, None if self.max_bad_share is None
                              else int(self.max_bad_share * train_images)) if v is not None]
        return min(limits) if limits else None

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_reference_batch

    def to_dict(self) -> dict:
        """The flat form: every option by its flag's name (JSON-ready)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "objective"}
        return {**flat, **{k: getattr(self.objective, k) for k in OBJECTIVE_KEYS}}


# the objective's options as flags (amp_dtype follows --precision, in the training loop)
OBJECTIVE_KEYS = tuple(f.name for f in fields(CGCConfig) if f.name != "amp_dtype")


# The no-argument run: the embedded set on a 2-core laptop, in minutes.
# ResNet-18 at 112 px: layer4 (stride 32) gives a 4x4 Grad-CAM map, the smallest where "inside the
# box" means something (64 px: 2x2, 96 px: 3x3; ImageNet's 7x7 needs 224 px, 4x the compute).
# lr 0.1 at batch 256 is the paper's (0.0125 at 32), warmed up over the first epoch; x 0.1 for the last.
LAPTOP = dict(epochs=5, batch_size=32, image_size=112, resize_size=128, lr=0.1, warmup_epochs=1.0,
              lr_milestones="4", num_workers=2, cpus_per_worker=0.5, val_batch_size=32, log_every_steps=5,
              deterministic=True)


# Named presets, merged once in `parse` under the flags and the YAML file: "paper" is the dataclass
# defaults (the paper's ImageNet recipe); "laptop" the embedded default run.
PRESETS = {"paper": {}, "laptop": LAPTOP}


class ConfigError(UserError):
    """A configuration that cannot run; the message names the option."""


def check(cfg: TrainConfig, cluster_gpus: float | None = None, cluster_cpus: float | None = None) -> None:
    """Everything that can be checked without starting a worker; with the
    cluster's GPU and CPU counts, also whether the request fits it."""
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    obj = cfg.objective  # CGCConfig checked its options when it was built
    need(cfg.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}")
    need(cfg.arch in torchvision.models.list_models(module=torchvision.models),
         f"--arch {cfg.arch!r} is not a torchvision classifier (e.g. resnet18, resnet50, resnext50_32x4d)")
    need(not (obj.recipe == "baseline" and obj.lam), f"--recipe baseline trains without the CGC term; drop --lam {obj.lam}")
    need(cfg.num_workers >= 1, f"--num-workers must be >= 1, got {cfg.num_workers}")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size % cfg.num_workers == 0,
         f"--batch-size {cfg.batch_size} is not divisible by --num-workers {cfg.num_workers}")
    per_worker = cfg.batch_size // cfg.num_workers
    need(obj.recipe == "baseline" or obj.consistency == "mse" or per_worker >= 2,
         f"--batch-size {cfg.batch_size} gives {per_worker} image per worker: the contrastive loss needs >= 2")
    need(obj.negatives != "block" or per_worker % obj.block_size == 0,
         f"--negatives block needs --block-size dividing the per-worker batch {per_worker}")
    need(cfg.val_batch_size >= 2, "--val-batch-size must be >= 2 (the validation CGC loss needs negatives)")
    need(cfg.image_size <= cfg.resize_size, f"--image-size {cfg.image_size} > --resize-size {cfg.resize_size}")
    need(not cfg.sync_bn or cfg.num_workers > 1, "--sync-bn needs more than one worker")
    need(not cfg.sync_bn or cfg.use_gpu, "--sync-bn needs --use-gpu (torch's SyncBatchNorm runs on GPUs only)")
    need(not (cfg.precision == "fp16" and not cfg.use_gpu), "--precision fp16 needs --use-gpu (use bf16 on the CPU)")
    need(cfg.dataset in EMBEDDED or cfg.data or (cfg.train_manifest and cfg.val_manifest),
         f"--data is required for --dataset {cfg.dataset}")
    need(cfg.gpus_per_worker > 0, f"--gpus-per-worker must be > 0, got {cfg.gpus_per_worker}")
    need(not (cfg.use_gpu and cfg.num_workers > 1 and cfg.gpus_per_worker < 1 and not cfg.share_gpus),
         f"--gpus-per-worker {cfg.gpus_per_worker:g} with --num-workers {cfg.num_workers} can put two DDP ranks "
         "on one GPU, which NCCL refuses; use whole GPUs, one worker, or pass --share-gpus to try anyway")
    _check_ranges(cfg, need)
    need(cfg.head_lr is None or cfg.head_lr > 0, f"--head-lr must be > 0, got {cfg.head_lr}")
    need(0 <= cfg.warmup_epochs < cfg.epochs, f"--warmup-epochs must be in [0, --epochs), got {cfg.warmup_epochs}")
    _check_milestones(cfg.lr_milestones, need)
    _check_model(cfg, need)
    if cluster_cpus is not None and not cfg.autoscaling:
        workers = cfg.num_workers * cfg.cpus_per_worker
        fits = math.floor(100 * (cluster_cpus - DATA_CPUS) / cfg.num_workers) / 100
        need(cluster_cpus >= workers + DATA_CPUS,
             f"--num-workers {cfg.num_workers} x --cpus-per-worker {cfg.cpus_per_worker:g} take {workers:g} CPUs and "
             f"the input pipeline needs {DATA_CPUS:g} more; the cluster has {cluster_cpus:g} "
             + (f"(--cpus-per-worker {fits:g} fits" if fits > 0 else "(fewer --num-workers fit")
             + "; on a cluster that adds nodes on demand, pass --autoscaling)")
    if cfg.use_gpu and cluster_gpus is not None and not cfg.autoscaling:
        gpus = cfg.num_workers * cfg.gpus_per_worker
        need(cluster_gpus >= gpus,
             f"--use-gpu with --num-workers {cfg.num_workers} needs {gpus:g} GPUs; the cluster has {cluster_gpus:g} "
             "(on a cluster that adds GPU nodes on demand, pass --autoscaling)")


# option -> (test, the allowed range in words)
RANGES = {
    "lr": (lambda v: v > 0, "> 0"), "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"), "lr_gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "max_bad_images": (lambda v: v is None or v >= 0, ">= 0"),
    "max_bad_share": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"), "keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "cpus_per_worker": (lambda v: v > 0, "> 0"), "max_failures": (lambda v: v >= -1, ">= -1 (-1: no limit)"),
    "checkpoint_every_steps": (lambda v: v >= 0, ">= 0 (0: once per epoch)"),
    "log_every_steps": (lambda v: v >= 1, ">= 1"), "image_size": (lambda v: v >= 16, ">= 16"),
    "decode_batch": (lambda v: v >= 1, ">= 1"), "lr_reference_batch": (lambda v: v >= 1, ">= 1"),
    "explain_images": (lambda v: v >= 0, ">= 0 (0: off)"), "figure_images": (lambda v: v >= 0, ">= 0"),
    "val_batches": (lambda v: v is None or v >= 1, ">= 1"),
    "object_store_limit_gb": (lambda v: v is None or v > 0, "> 0"),
    "stall_seconds": (lambda v: v >= 0, ">= 0 (0: off)"),
    "ray_log_level": (lambda v: v in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
}


def _check_ranges(cfg: TrainConfig, need) -> None:
    for name, (ok, allowed) in RANGES.items():
        value = getattr(cfg, name)
        need(ok(value), f"--{name.replace('_', '-')} must be {allowed}, got {value}")


def _check_model(cfg: TrainConfig, need) -> None:
    """--arch and --layer fit CGC: a Linear head to replace, and a layer whose
    output is a (N, C, H, W) feature map to explain. Checked on the meta
    device: shapes only, no memory, no weights."""
    layer, cam = cfg.objective.layer, cfg.objective.cam
    with torch.device("meta"):
        model = torchvision.models.get_model(cfg.arch, weights=None).train()  # as training will run it
    need(any(isinstance(m, torch.nn.Linear) for m in model.modules()),
         f"--arch {cfg.arch} has no Linear classification head to replace")
    need(layer in dict(model.named_modules()), f"--layer {layer!r} is not a module of {cfg.arch} "
         f"(its top-level modules: {', '.join(n for n, _ in model.named_children())})")
    net = CamNet(model, layer)  # what training runs: its hooks catch the layer and BatchNorm after it
    try:
        out, feats = net(torch.empty(2, 3, cfg.image_size, cfg.image_size, device="meta"))
    except InPlaceLayer:
        need(False, f"--layer {layer} of {cfg.arch}: its output is changed in place later in the forward (e.g. "
             "`out += identity`, ReLU(inplace=True)), so Grad-CAM would explain another layer's map; choose the "
             "block or activation that ends the in-place chain")
    except UnsuitableLayer as e:
        need(False, f"--layer {layer} of {cfg.arch}: {e}")
    except (RuntimeError, ValueError, AssertionError) as e:  # torchvision asserts input sizes (ViT)
        need(False, f"--arch {cfg.arch} cannot run on --image-size {cfg.image_size} inputs ({e})")
    finally:
        net.remove()
    closed_form = net.linear_head() is not None
    need(not (cfg.sync_bn and net.batch_coupled),
         f"--sync-bn with --layer {layer} of {cfg.arch}: a batch-statistics BatchNorm follows the layer, so "
         "each image's Grad-CAM is taken from its own gradient (a batched backward), which SyncBatchNorm's "
         "cross-GPU backward does not support; drop --sync-bn or explain a layer after the last BatchNorm")
    need(cam != "closed_form" or closed_form, f"--cam closed_form needs --layer layer4 followed by global average "
         f"pooling and a Linear fc (a torchvision ResNet); {cfg.arch} --layer {layer} needs --cam autograd or auto")
    need(not cfg.compile or cam == "closed_form" or (cam == "auto" and closed_form),
         f"--compile with the autograd Grad-CAM (--cam {cam} at {cfg.arch} --layer {layer}) fails at the first "
         "step: the compiled graph returns the layer's activations detached from the logits; use --cam closed_form "
         "(layer4 of a ResNet) or drop --compile")
    need(isinstance(out, torch.Tensor), f"--arch {cfg.arch} returns {type(out).__name__} in training (auxiliary "
         "classifier outputs), not logits; CGC trains models whose forward returns logits")
    need(feats.dim() == 4, f"--layer {layer} of {cfg.arch} gives {tuple(feats.shape)}, not a conv feature map "
         "(N, C, H, W) that Grad-CAM can explain")


def _check_milestones(text: str | None, need) -> None:
    if text is None:
        return
    items = [x.strip() for x in str(text).split(",")]
    need(all(x.isdigit() for x in items), f"--lr-milestones must be epochs like 12,16, got {text!r}")
    marks = [int(x) for x in items]
    need(marks == sorted(set(marks)), f"--lr-milestones must increase, got {text!r}")


def parse(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from `--config file.yaml` and flags (flags win)."""
    parser = argparse.ArgumentParser(description="Train a classifier with CGC on Ray Train.")
    parser.add_argument("--config", help="YAML file with any of the options below")
    for f in flag_fields():
        _add_flag(parser, f)
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        values.update(_read_yaml(args.config))
    given = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    values.update(given)
    values["dataset"] = default_dataset(values.get("dataset"), values.get("data"))
    values["preset"] = values.get("preset") or ("laptop" if values["dataset"] in EMBEDDED else "paper")
    if values["preset"] not in PRESETS:
        raise ConfigError(f"--preset must be one of {sorted(PRESETS)}, got {values['preset']!r}")
    preset = dict(PRESETS[values["preset"]])
    if "warmup_epochs" in preset and "warmup_epochs" not in values:  # leave at least one full epoch
        preset["warmup_epochs"] = min(preset["warmup_epochs"], max(0, values.get("epochs", preset["epochs"]) - 1))
    return TrainConfig.from_dict(absolute_paths({**preset, **values}, PATH_FIELDS))


def flag_fields() -> list:
    """TrainConfig's fields with `objective` spread into CGCConfig's: one flag each."""
    spread = [f for f in fields(CGCConfig) if f.name in OBJECTIVE_KEYS]
    return [g for f in fields(TrainConfig) for g in (spread if f.name == "objective" else [f])]


def flag_names() -> list[str]:
    return [f.name for f in flag_fields()]


def comparable(stored: dict) -> dict:
    """A stored flat configuration (a run's config.json, a trial spec) as this
    version would write it, to compare with a new request: a --lam stored as
    None (versions before the nested objective) becomes the value it meant,
    and options this version does not know are dropped."""
    names = set(flag_names())
    try:
        now = TrainConfig.from_dict({k: v for k, v in stored.items() if k in names}).to_dict()
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"a stored configuration cannot be read by this version ({e}); start a new run or "
                          "sweep with another --name") from None
    return {k: v for k, v in now.items() if k in stored}


PATH_FIELDS = ("data", "manifest_dir", "train_manifest", "val_manifest", "weights", "storage_path")


def absolute_paths(values: dict, names) -> dict:
    """Local paths made absolute here, in the driver: Ray's workers and Tune's
    trials run in other working folders, where a relative path means another
    place. URIs (s3://...) stay as they are."""
    return {k: (os.path.abspath(v) if k in names and isinstance(v, str) and v and "://" not in v else v)
            for k, v in values.items()}


def _add_flag(parser, f):
    flag = "--" + f.name.replace("_", "-")
    kind = _base_type(f.type)
    if kind is bool:
        parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
    else:
        parser.add_argument(flag, dest=f.name, default=None, type=kind)


def _base_type(annotation: str):
    name = str(annotation).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool}.get(name, str)


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from e
    known = set(flag_names())
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown options {unknown}")
    return data
