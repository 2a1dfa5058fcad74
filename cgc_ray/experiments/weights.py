"""Initial weights from other training code (Ray-free)."""

from __future__ import annotations

import io

import torch
import torchvision

from ..data.storage import StorageOptions, write_bytes
from ..errors import UserError
from ..train.model import load_state_dict


def backbone_only(uri: str, arch: str, out_uri: str, storage: StorageOptions = StorageOptions()) -> str:
    """Writes the tensors of a checkpoint that belong to torchvision's `arch`
    (e.g. a SwAV ResNet-50 without its projection head and prototypes, which
    the training service would otherwise reject as unexpected keys); returns out_uri."""
    own = torchvision.models.get_model(arch, weights=None).state_dict()
    kept = {k: v for k, v in load_state_dict(uri, storage).items() if k in own}
    if not kept:
        raise UserError(f"--weights {uri}: no tensor of it belongs to {arch}")
    buf = io.BytesIO()
    torch.save(kept, buf)
    write_bytes(out_uri, buf.getvalue(), storage)
    return out_uri
