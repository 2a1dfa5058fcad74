"""The spatial transform T of CGC: RandomResizedCrop + horizontal flip.

`sample_crop_flip` draws T's parameters on the CPU (torchvision's algorithm);
`crop_resize_flip` applies them to a whole batch of images or heatmaps on
their device in two batched matrix products, with no Python loop and no host
synchronisation.
The resampling reproduces `F.interpolate(crop, size, mode="bilinear",
align_corners=False)` of each crop exactly, which is what the authors applied
to the heatmaps one image at a time.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop(height: int, width: int, rng: np.random.Generator,
                        scale=SCALE, ratio=RATIO) -> list[int]:
    """RandomResizedCrop's box (top, left, height, width): torchvision's
    algorithm (10 tries of area and log-uniform aspect ratio, then a center
    crop clamped to the ratio range), drawn from a numpy Generator so each
    process and epoch can have its own stream."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return [int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w]
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def sample_crop_flip(height: int, width: int, rng: np.random.Generator,
                     scale=SCALE, ratio=RATIO, flip_p: float = 0.5) -> tuple[list[int], bool]:
    """Draw one T: crop (top, left, height, width) and the flip actually applied.

    The authors' data loader flipped with probability 0.25 while flagging 0.5
    (a RandomHorizontalFlip(p=0.5) inside an `if random() > 0.5` branch), so a
    quarter of their pairs had a flag that did not match the image. Here the
    one draw decides both the flip and its flag.
    """
    return random_resized_crop(height, width, rng, scale, ratio), bool(rng.random() < flip_p)


def draw_train_params(height: int, width: int, recipe: str, size: int, rng: np.random.Generator) -> dict:
    """The random parts of a recipe's training views, in one order for every
    decode path (CPU views and the device decoder): "xe_box" int64 (4,) the
    RandomResizedCrop (top, left, h, w) in pixels of the height x width image,
    "xe_flip" bool; unless recipe is "baseline", T of the size x size query:
    "crop" int64 (4,) and "flip" bool (`sample_crop_flip`)."""
    out = {"xe_box": np.asarray(random_resized_crop(height, width, rng), dtype=np.int64),
           "xe_flip": bool(rng.random() < 0.5)}
    if recipe != "baseline":
        crop, flip = sample_crop_flip(size, size, rng)
        out.update(crop=np.asarray(crop, dtype=np.int64), flip=flip)
    return out


def _source_index(start, length, out_size: int, dtype=torch.float32):
    """Per-sample source rows (or columns) of bilinear resampling with
    align_corners=False, as PyTorch's upsample_bilinear2d defines them.

    start, length: (B,) int tensors of the crop; returns i0, i1 (B, out) int64
    and the weight of i1, (B, out) in `dtype`.
    """
    dst = torch.arange(out_size, device=start.device, dtype=dtype)
    scale = length.to(dtype)[:, None] / out_size
    src = (scale * (dst + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.to(torch.int64)  # floor, src >= 0
    lam = src - i0
    i1 = i0 + (i0 < length[:, None] - 1).to(torch.int64)
    return start[:, None] + i0, start[:, None] + i1, lam


def _weights(start, length, out_size: int, in_size: int, dtype) -> torch.Tensor:
    """(B, out, in) bilinear resampling matrices: two non-zero weights a row."""
    i0, i1, lam = _source_index(start, length, out_size, dtype)
    w = torch.zeros(start.shape[0], out_size, in_size, dtype=dtype, device=start.device)
    w.scatter_add_(2, i0[..., None], (1 - lam)[..., None])
    return w.scatter_add_(2, i1[..., None], lam[..., None])


def crop_resize_flip(maps: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor,
                     size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Crop each map to its box, resize bilinearly to `size`, flip if flagged.

    maps: (B, H, W) or (B, C, H, W); crop: (B, 4) int (top, left, height,
    width) in pixels of `maps`; flip: (B,) bool. Differentiable in `maps`.
    Separable resampling as two batched matrix products, Wy @ map @ Wx^T: on a
    GPU that is faster than gathers, and its backward needs no atomics.
    """
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    h_in, w_in = x.shape[-2:]
    out_h, out_w = (x.shape[-2:] if size is None else
                    (size, size) if isinstance(size, int) else size)
    crop = crop.to(device=x.device, dtype=torch.int64, non_blocking=True)
    flip = flip.to(device=x.device, dtype=torch.bool, non_blocking=True)
    index_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    wy = _weights(crop[:, 0], crop[:, 2], out_h, h_in, index_dtype).to(x.dtype)
    wx = _weights(crop[:, 1], crop[:, 3], out_w, w_in, index_dtype).to(x.dtype)
    wx = torch.where(flip[:, None, None], wx.flip(1), wx)  # a flip reverses the output columns
    out = wy[:, None] @ x @ wx.transpose(1, 2)[:, None]
    return out.squeeze(1) if squeeze else out


def check_crops(crop: torch.Tensor, height: int, width: int, name: str = "crop") -> None:
    """Reject crop boxes that leave the image (reads values: CPU tensors only)."""
    bad = ((crop[:, 0] < 0) | (crop[:, 1] < 0) | (crop[:, 2] < 1) | (crop[:, 3] < 1)
           | (crop[:, 0] + crop[:, 2] > height) | (crop[:, 1] + crop[:, 3] > width))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{name}[{i}] = {crop[i].tolist()} (top, left, height, width) is not "
            f"inside the {height}x{width} image")
