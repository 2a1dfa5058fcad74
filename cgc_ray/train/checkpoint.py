"""What a checkpoint holds: model, optimiser, scheduler, grad scaler and position
(epoch, step in epoch, global step) in one `state.pt`, plus a `meta.json` a
person (or the evaluation job) can read without torch.

`state.pt` holds tensors and plain Python values only, so every read is
`torch.load(weights_only=True)`: a crafted file that carries pickled code is
refused, naming the global it asks for. No RNG state is stored: the loop seeds
torch at the start of every epoch (per rank), and the augmentations are drawn
in the data pipeline; a checkpoint therefore resumes on any number of GPUs."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..data.storage import StorageOptions, read_bytes
from .model import UnsafeCheckpoint, build_model, load_state  # noqa: F401 (UnsafeCheckpoint: re-export)

STATE, META = "state.pt", "meta.json"


def save(directory: str, *, model, optimizer, scheduler, scaler, epoch: int, step_in_epoch: int,
         global_step: int, meta: dict) -> None:
    """Write the training state; `epoch` is the epoch in progress (or the next
    one, with step_in_epoch = 0, after an epoch has finished)."""
    position = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "position": position,
    }, os.path.join(directory, STATE))
    with open(os.path.join(directory, META), "w") as f:
        json.dump({**meta, **position}, f, indent=1)


def load(directory: str, *, model, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore what is given; returns the position {epoch, step_in_epoch, global_step}."""
    with open(os.path.join(directory, STATE), "rb") as f:
        state = load_state(f.read(), os.path.join(directory, STATE))
    model.load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            obj.load_state_dict(state[key])
    return state["position"]



def read_meta(directory: str) -> dict:
    with open(os.path.join(directory, META)) as f:
        return json.load(f)


def load_model(uri: str, storage: StorageOptions = StorageOptions()) -> tuple[nn.Module, dict]:
    """The model of a checkpoint folder (local path or s3://) and its meta.json."""
    meta = json.loads(read_bytes(f"{uri.rstrip('/')}/{META}", storage))
    state = load_state(read_bytes(f"{uri.rstrip('/')}/{STATE}", storage), f"{uri.rstrip('/')}/{STATE}")
    model = build_model(meta["arch"], len(meta["classes"]))
    model.load_state_dict(state["model"])
    return model, meta
