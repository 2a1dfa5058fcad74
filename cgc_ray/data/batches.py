"""From a batch of uint8 views (as Ray Data hands them) to the objective's
float batch on the training device (Ray-free)."""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import IMAGENET_MEAN, IMAGENET_STD
from ..transforms import crop_resize_flip

IMAGE_KEYS = ("xe", "image")


def normalize(images: torch.Tensor, device, channels_last: bool = False) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, ImageNet mean/std, on `device`."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_device(batch: dict, recipe: str, device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The objective's batch: normalised views, "aug" made here from the query
    with T's parameters, labels on the device; crop/flip stay on the CPU (the
    objective checks them there without a host sync and moves them itself)."""
    out = {k: normalize(_tensor(batch[k]), device, channels_last) for k in IMAGE_KEYS if k in batch}
    out["label"] = _tensor(batch["label"]).to(device, non_blocking=True)
    if "crop" in batch:
        out["crop"], out["flip"] = _tensor(batch["crop"]), _tensor(batch["flip"])
        query = out["image" if "image" in out else "xe"]
        out["aug"] = crop_resize_flip(query, out["crop"], out["flip"]).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return out


def _tensor(array) -> torch.Tensor:
    """A CPU tensor of a batch column. Ray Data hands read-only arrays (zero-copy
    from the object store), which torch warns about: those are copied."""
    return torch.from_numpy(np.require(array, requirements="W"))
