"""JPEG decoding on the training device (nvJPEG through torchvision) instead of
the CPU: the CPU side only reads the bytes and the JPEG header and draws the
augmentation parameters; the worker decodes the batch on its GPU and makes
the views there with torchvision's tensor ops (Ray-free).

Files nvJPEG cannot take (CMYK JPEGs, PNGs named .JPEG, other formats) are
decoded on the CPU and re-encoded as RGB JPEG (quality 95) — ImageNet has a
few dozen such files. Files with a bad header are skipped and counted on the CPU
like on the CPU path. One the device decoder refuses (a JPEG variant nvJPEG
lacks, a truncated file) is decoded on the CPU instead, never dropped, and
handed to `on_fallback` (the training loop counts those); only a file the CPU
cannot decode either is dropped from its batch, logged and handed to
`on_failure` (the loop counts it in the run's ledger of unreadable images).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg

from .views import decode_rgb, open_image

log = logging.getLogger(__name__)


def device_ready(data: bytes) -> tuple[bytes, int, int]:
    """(JPEG bytes nvJPEG can decode, height, width), from the header alone when possible."""
    header = open_image(data)
    fmt, mode, (w, h) = header.format, header.mode, header.size
    if fmt == "JPEG" and mode in ("RGB", "L"):
        return data, h, w
    img = decode_rgb(data)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue(), img.height, img.width


def decode_views(raw: dict, recipe: str, size: int, resize: int, device, on_failure=None, on_fallback=None) -> dict:
    """Decode raw["jpeg"] on `device` and make the views as (B, H, W, 3) uint8
    tensors there, ready for `batches.to_device`. Rows the device refuses are
    decoded on the CPU and passed to on_fallback([uri, ...]); rows neither can
    decode are dropped and passed to on_failure([(uri, reason), ...])."""
    images, keep, failed, fallbacks = _decode(raw["jpeg"], device)
    uris = raw.get("uri", [f"<row {i}>" for i in range(len(raw["jpeg"]))])
    if fallbacks and on_fallback:
        on_fallback([str(uris[i]) for i in fallbacks])
    bad = [(str(uris[i]), f"device decode: {reason}") for i, reason in failed]
    if bad:
        (on_failure or _log)(bad)
    if not keep:
        raise BadBatch(f"no image of a batch of {len(uris)} could be decoded on the device, e.g. {bad[0][0]} "
                       f"({bad[0][1]})")
    out = {"xe": torch.stack([_xe(images[i], raw["xe_box"][i], raw["xe_flip"][i], size) for i in keep])}
    if recipe == "official":
        out["image"] = torch.stack([TF.center_crop(TF.resize(images[i], [resize], antialias=True), [size, size])
                                    for i in keep])
    out = {k: v.permute(0, 2, 3, 1) for k, v in out.items()}
    for key in ("label", "crop", "flip"):
        if key in raw:
            out[key] = torch.as_tensor(np.asarray(raw[key])[keep])
    return out


def _xe(img: torch.Tensor, box, flip, size: int) -> torch.Tensor:
    top, left, h, w = (int(v) for v in box)
    view = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(view) if flip else view


def _log(bad):
    for uri, reason in bad:
        log.warning("skipping unreadable image %s (%s)", uri, reason)


class BadBatch(RuntimeError):
    """Not one image of a batch could be decoded."""


def _decode(blobs, device) -> tuple[list, list[int], list[tuple[int, str]], list[int]]:
    """Decoded (3, H, W) uint8 images on `device`, the positions that worked,
    (position, reason) of those that did not, and the positions the CPU decoded."""
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    try:
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device), list(range(len(tensors))), [], []
    except RuntimeError:  # one file the device refuses fails the batched call: one by one
        images, keep, failed, fallbacks = [None] * len(tensors), [], [], []
        for i, t in enumerate(tensors):
            try:
                images[i] = decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e:
                images[i] = _cpu_decode(blobs[i], device)
                if images[i] is None:
                    failed.append((i, str(e).strip().splitlines()[0] if str(e).strip() else "RuntimeError"))
                    continue
                fallbacks.append(i)
            keep.append(i)
        return images, keep, failed, fallbacks


def _cpu_decode(data: bytes, device) -> torch.Tensor | None:
    """The CPU path's decode (Pillow) of a file the device refused, as (3, H, W) uint8 on `device`."""
    try:
        rgb = np.array(decode_rgb(data))
    except (OSError, ValueError):  # BadImage is a ValueError
        return None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(device)
