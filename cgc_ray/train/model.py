"""Building the classifier: a torchvision architecture, initial weights from a
path or object storage (no hub downloads), and a head for the data set."""

from __future__ import annotations

import io
import pickle
import re

import torch
import torchvision
from torch import nn

from ..data.storage import StorageOptions, read_bytes
from ..errors import UserError


def build_model(arch: str, num_classes: int, weights: str | None = None,
                storage: StorageOptions = StorageOptions()) -> nn.Module:
    """`arch` with `weights` loaded (a state dict, possibly under "state_dict" or
    "model", "module." prefixes stripped), then its head replaced when the
    class count differs."""
    model = torchvision.models.get_model(arch, weights=None)
    name, head = _head(model)
    if weights:
        head_keys = {f"{name}.weight", f"{name}.bias"}
        own = model.state_dict()
        state = {k: v for k, v in load_state_dict(weights, storage).items()
                 if not (k in head_keys and k in own and v.shape != own[k].shape)}  # a head for other classes
        wrong = sorted(k for k, v in state.items() if k in own and v.shape != own[k].shape)
        missing = sorted(set(own) - set(state) - head_keys)
        unexpected = sorted(set(state) - set(own))
        if wrong or missing or unexpected:
            raise ValueError(f"{weights}: does not fit {arch} (wrong shapes {wrong[:3]}, missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        model.load_state_dict(state, strict=False)
    if head.out_features != num_classes:
        _set(model, name, nn.Linear(head.in_features, num_classes))
    return model


def load_state_dict(uri: str, storage: StorageOptions = StorageOptions()) -> dict:
    try:
        raw = read_bytes(uri, storage)
    except OSError as e:
        raise FileNotFoundError(f"--weights {uri}: cannot read ({e})") from e
    state = load_state(raw, uri)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}


def head_name(model: nn.Module) -> str:
    """Where the classification head is (e.g. "fc"), for its own learning rate."""
    return _head(model)[0]


def _head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last Linear layer: the classification head of torchvision classifiers."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear head to replace")
    return linears[-1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def load_state(raw: bytes, name: str) -> dict:
    """A `state.pt` read weights-only; UnsafeCheckpoint names `name` and what it refused."""
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {found.group(1)}" if found else str(e).strip().splitlines()[0]
        raise UnsafeCheckpoint(f"{name}: refused by a weights-only load, it asks for {what} (a file written "
                               "by another tool or an older cgc-ray, or a crafted one)") from None


class UnsafeCheckpoint(UserError):
    """A state file that a weights-only load refuses."""
