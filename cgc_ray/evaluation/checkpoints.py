"""The checkpoints an evaluation compares (Ray-free): loading them, skipping
unusable ones, the class sets that count as each data-set class, and the
table's method labels."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from torch import nn

from ..data.indexers import unrel
from ..data.manifest import Manifest
from ..data.storage import StorageOptions
from ..train.checkpoint import load_model
from .config import EvalConfig, EvalError

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    uri: str
    meta: dict
    model: nn.Module

    @property
    def layer(self) -> str:
        return self.meta.get("layer", "layer4")


def load_checkpoint(uri: str, storage: StorageOptions = StorageOptions(), device="cpu") -> Checkpoint:
    """A training checkpoint (state.pt + meta.json, local or s3://) as an eval-mode model."""
    try:
        model, meta = load_model(uri, storage)
    except OSError as e:
        raise EvalError(f"--checkpoint {uri}: cannot read the checkpoint ({e})") from e
    except (KeyError, ValueError, RuntimeError) as e:  # meta.json and state.pt disagree, or are not ours
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"--checkpoint {uri}: state.pt does not fit its meta.json ({first})") from e
    return Checkpoint(uri, meta, model.to(device).eval())


def usable_checkpoints(cfg: EvalConfig, manifest: Manifest, present: set[int]):
    """The checkpoints that can be evaluated on these images: (cfg narrowed to
    them, them loaded, their class sets, the skipped ones with the reason).
    A bad checkpoint is an error, or with --skip-bad a warning."""
    kept, loaded, sets, skipped = [], [], [], []
    for k, uri in enumerate(cfg.checkpoints):
        try:
            ck = load_checkpoint(uri, cfg.storage())
            try:
                sets.append(class_sets(cfg.dataset, manifest.classes, ck.meta["classes"], present))
            except EvalError as e:
                raise EvalError(f"--checkpoint {uri}: {e}") from e
        except EvalError as e:
            if not cfg.skip_bad:
                raise
            log.warning("skipping %s", e)
            print(f"skipped: {e}", flush=True)
            skipped.append({"checkpoint": uri, "reason": str(e)})
            continue
        kept.append(k)
        loaded.append(ck)
    if not kept:
        raise EvalError("no --checkpoint can be evaluated: " + "; ".join(s["reason"] for s in skipped))
    narrowed = dataclasses.replace(cfg, checkpoints=tuple(cfg.checkpoints[k] for k in kept),
                                   labels=tuple(cfg.labels[k] for k in kept) if cfg.labels else ())
    return narrowed, loaded, sets, skipped


def class_sets(dataset: str, data_classes: list[str], model_classes: list[str], labels=None) -> list[list[int]]:
    """Per data-set class, the model classes that count as that class; every
    class in `labels` (indices; default: all) must have at least one."""
    needed = None if labels is None else {data_classes[i] for i in labels}
    if dataset == "unrel":
        try:
            return unrel.class_sets(data_classes, model_classes, needed)
        except ValueError as e:
            raise EvalError(str(e)) from e
    index = {c: i for i, c in enumerate(model_classes)}
    if missing := [c for c in data_classes if c not in index and (needed is None or c in needed)]:
        raise EvalError(f"the checkpoint's classes lack {len(missing)} of the data set's, e.g. {missing[:3]}")
    return [[index[c]] if c in index else [] for c in data_classes]


def default_label(meta: dict) -> str:
    """"baseline", or the recipe and its lambda: "official (lambda 1)"."""
    recipe, lam = meta.get("recipe", "?"), meta.get("lam")
    if recipe == "baseline" or not isinstance(lam, (int, float)):
        return str(recipe)
    return f"{recipe} (lambda {lam:g})"


def method_labels(cfg: EvalConfig, metas: list[dict]) -> list[str]:
    labels = list(cfg.labels) or [default_label(m) for m in metas]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels
