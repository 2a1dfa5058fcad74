"""What a checkpoint holds: model, optimiser, scheduler, grad scaler, position
(epoch, step in epoch, global step) and RNG states, in one `state.pt`, plus a
`meta.json` a person (or the evaluation job) can read without torch."""

from __future__ import annotations

import io
import json
import os
import random

import numpy as np
import torch
from torch import nn

from ..data.storage import StorageOptions, read_bytes
from .model import build_model

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
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }, os.path.join(directory, STATE))
    with open(os.path.join(directory, META), "w") as f:
        json.dump({**meta, **position}, f, indent=1)


def load(directory: str, *, model, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore what is given; returns the position {epoch, step_in_epoch, global_step}."""
    state = torch.load(os.path.join(directory, STATE), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            obj.load_state_dict(state[key])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["position"]


def read_meta(directory: str) -> dict:
    with open(os.path.join(directory, META)) as f:
        return json.load(f)


def load_model(uri: str, storage: StorageOptions = StorageOptions()) -> tuple[nn.Module, dict]:
    """The model of a checkpoint folder (local path or s3://) and its meta.json."""
    meta = json.loads(read_bytes(f"{uri.rstrip('/')}/{META}", storage))
    # Our own checkpoints also hold optimiser and RNG state (numpy arrays): not weights_only.
    state = torch.load(io.BytesIO(read_bytes(f"{uri.rstrip('/')}/{STATE}", storage)), map_location="cpu",
                       weights_only=False)
    model = build_model(meta["arch"], len(meta["classes"]))
    model.load_state_dict(state["model"])
    return model, meta
