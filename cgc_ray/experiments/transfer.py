"""Transfer on the embedded sets: a model trained on half of the classes is
where the few-shot, fine-grained and semi-supervised runs start on the other half.

The paper fine-tunes ImageNet-trained ResNets on new classes (CUB, Cars,
...); from random weights, a few images a class teach a ResNet nothing in
minutes. So on an embedded set without --weights these jobs first train the
baseline (cross-entropy) on the *source half* (the first half of the classes)
with the default run's schedule, keep its backbone (the head is dropped), and
fine-tune it on the *target half* (the other classes, labels renumbered from
0). Validation is the target half of the validation split, whose images have
boxes, so CH is scored. The source model is trained once a sweep, under
<sweep>/source/ (its backbone named by its epochs), after the request has
been checked against a stored sweep, and reused when the sweep is re-run or grown.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow as pa
import torch

from ..data.embedded import DATASETS as EMBEDDED
from ..data.manifest import Manifest
from ..data.manifest import write as write_manifest
from ..data.storage import StorageOptions, exists, write_bytes
from ..train.config import ConfigError, TrainConfig
from . import cli, runner

# The source model: the no-argument run's schedule (config.LAPTOP), cross-entropy only; `source_config`
# warms up over the first epoch and drops the lr x 0.1 for the last.
SOURCE = dict(epochs=5, batch_size=32, lr=0.1, lr_reference_batch=256, momentum=0.9, weight_decay=1e-4,
              lr_gamma=0.1, head_lr=None, val_batches=None)
# The trials' fine-tuning on the target half (a job's own preset adds epochs and batch): 112 px as the
# default run (a 4x4 Grad-CAM map), lr 0.01 at the given batch. Two workers at 0.45 CPU as jobs/miniature.py:
# a trial's share (0.01) and its input's CPU fit beside them on 2 cores (a single worker would train on one
# core: Ray gives a fractional-CPU worker one thread).
FINETUNE = dict(image_size=112, resize_size=128, lr=0.01, warmup_epochs=0.0, num_workers=2, cpus_per_worker=0.45,
                val_batch_size=32, log_every_steps=20)


def split_classes(manifest: Manifest) -> tuple[Manifest, Manifest]:
    """(source, target): the rows of the first ceil(C/2) classes, and those of
    the others with labels renumbered from 0 (class lists cut to match)."""
    n = len(manifest.classes)
    if n < 2:
        raise ValueError(f"{manifest.dataset} has {n} class; halves need at least 2")
    cut = -(-n // 2)
    labels = manifest.table.column("label").to_numpy()
    return _part(manifest, labels < cut, 0, "source"), _part(manifest, labels >= cut, cut, "target")


def _part(manifest: Manifest, keep: np.ndarray, first: int, name: str) -> Manifest:
    table = manifest.table.filter(pa.array(keep))
    labels = pa.array(table.column("label").to_numpy() - first, pa.int32())
    table = table.set_column(table.schema.get_field_index("label"), "label", labels)
    cut = -(-len(manifest.classes) // 2)
    classes = manifest.classes[:cut] if first == 0 else manifest.classes[cut:]
    return Manifest(table, list(classes), manifest.dataset, f"{manifest.split}-{name}", manifest.root)


def preset(epochs: int, batch_size: int, milestone: int) -> dict:
    """A job's embedded preset: FINETUNE with its length and batch (lr 0.01 at that batch)."""
    return {**FINETUNE, "epochs": epochs, "batch_size": batch_size, "lr_reference_batch": batch_size,
            "lr_milestones": str(milestone)}


def add_flags(p) -> None:
    p.add_argument("--source-epochs", type=int, help=f"epochs of the source model (default {SOURCE['epochs']})")
    p.add_argument("--from-scratch", action="store_true",
                   help="on an embedded set without --weights: no source model, the trials start from random weights")


def check_flags(args, datasets: list[str], base: TrainConfig) -> None:
    """--source-epochs and --from-scratch only where a source model would be trained."""
    where = all(d in EMBEDDED for d in datasets) and base.weights is None
    if args.source_epochs is not None and (args.source_epochs < 1 or args.from_scratch or not where):
        raise ConfigError(f"--source-epochs {args.source_epochs}: must be >= 1, and only for the source model "
                          "of an embedded set without --weights or --from-scratch")
    if args.from_scratch and not where:
        raise ConfigError("--from-scratch: only on an embedded set without --weights (elsewhere no source model "
                          "is trained)")


def applies(args, cfg: TrainConfig) -> bool:
    """The jobs' default on an embedded set without --weights, --train-manifest,
    --val-manifest or --from-scratch."""
    return (cfg.dataset in EMBEDDED and cfg.weights is None and not args.from_scratch
            and cfg.train_manifest is None and cfg.val_manifest is None)


def start(req: cli.Request, sw: runner.Sweep, cfg: TrainConfig) -> TrainConfig:
    """cfg on the target half from the source model's backbone where `applies`
    (else cfg as it is). Writes the halves' manifests under <sweep>/source/;
    training the source model, unless its backbone is stored, is added to
    `req.setup` (done once the sweep's request is checked)."""
    if not applies(req.args, cfg):
        return cfg
    uris, halves = {}, {}
    for split in (cfg.train_split, cfg.val_split):
        halves[split] = split_classes(cli.manifest(cfg, split, sw.storage))
        for part, m in zip(("source", "target"), halves[split]):
            uris[split, part] = sw.path("source", f"{cfg.dataset}-{split}-{part}.parquet")
            write_manifest(m, uris[split, part], sw.storage)
    source_cfg = source_config(req, cfg, uris[cfg.train_split, "source"], uris[cfg.val_split, "source"], sw)
    weights = sw.path("source", f"{cfg.dataset}-source-{source_cfg.epochs}ep-backbone.pt")

    def train_source():
        if exists(weights, sw.storage):
            return
        source, target = halves[cfg.train_split]
        print(f"training the source model on classes {', '.join(source.classes)}; the trials fine-tune it on "
              f"{', '.join(target.classes)}", flush=True)
        export_backbone(_train(source_cfg)["checkpoint"], weights, sw.storage)

    req.setup.append(train_source)
    return dataclasses.replace(cfg, weights=weights, train_manifest=uris[cfg.train_split, "target"],
                               val_manifest=uris[cfg.val_split, "target"])


def source_config(req: cli.Request, cfg: TrainConfig, train: str, val: str, sw: runner.Sweep) -> TrainConfig:
    """The source schedule (SOURCE; --source-epochs sets its length) over the
    job's other training options (--arch, --image-size, resources, ...); the
    batch rounded down to a multiple of the workers."""
    epochs = req.args.source_epochs or SOURCE["epochs"]
    batch = max(cfg.num_workers, SOURCE["batch_size"] - SOURCE["batch_size"] % cfg.num_workers)
    return dataclasses.replace(cfg, **SOURCE | {"epochs": epochs, "batch_size": batch},
                               warmup_epochs=1.0 if epochs > 1 else 0.0,
                               lr_milestones=str(epochs - 1) if epochs > 1 else None, train_manifest=train,
                               val_manifest=val, explain_images=0, name=f"{cfg.dataset}-source-{epochs}ep",
                               storage_path=sw.path("source", "runs")).with_objective(recipe="baseline")


def _train(cfg: TrainConfig) -> dict:
    from ..train import service  # noqa: PLC0415: Ray Train only when the source model is trained

    return service.run(cfg)


def export_backbone(checkpoint: str, uri: str, storage: StorageOptions = StorageOptions()) -> str:
    """The checkpoint's model without its classification head, as a state dict at `uri`."""
    from ..train.checkpoint import load_model  # noqa: PLC0415
    from ..train.model import head_name  # noqa: PLC0415

    model, _ = load_model(checkpoint, storage)
    head = head_name(model) + "."
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(uri, buf.getvalue(), storage)
    return uri
