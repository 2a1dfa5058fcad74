"""Decoding and the CPU side of the views (Ray-free).

One decode per image; from it, the views a recipe needs as uint8 HWC arrays:
- "xe": RandomResizedCrop(size) + horizontal flip (p = 0.5) of the full image;
- "image": Resize(resize) + CenterCrop(size);
- "crop"/"flip": the parameters of T, in pixels of the query view ("image" for
  the official recipe, "xe" for two_view). The "aug" view itself is made on the
  training device from the query (`batches.to_device`), so the CPU neither
  decodes nor resizes twice.
Validation: Resize(resize) + CenterCrop(size), with boxes mapped into the crop.
The geometric ops are torchvision's own functional ops on PIL images.
"""

from __future__ import annotations

import io

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile

from ..transforms import random_resized_crop, sample_crop_flip

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey image
RECIPE_VIEWS = {"official": ("xe", "image"), "two_view": ("xe",), "baseline": ("xe",)}


class BadImage(ValueError):
    """The bytes are not a decodable image (empty, truncated, corrupt)."""


def decode_rgb(data: bytes) -> Image.Image:
    """Any PIL-readable bytes as RGB: greyscale, CMYK and PNG-inside-.JPEG included
    (the format is read from the content, not the file name)."""
    if not data:
        raise BadImage("zero-byte file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from e


def center_view(img: Image.Image, resize: int, size: int) -> Image.Image:
    return TF.center_crop(TF.resize(img, resize), size)


def train_views(img: Image.Image, recipe: str, size: int, resize: int, rng: np.random.Generator) -> dict:
    """The recipe's CPU views of one decoded image, plus T's parameters."""
    w, h = img.size
    top, left, ch, cw = random_resized_crop(h, w, rng)
    xe = TF.resized_crop(img, top, left, ch, cw, [size, size])
    if rng.random() < 0.5:
        xe = TF.hflip(xe)
    out = {"xe": np.asarray(xe)}
    if recipe == "official":
        out["image"] = np.asarray(center_view(img, resize, size))
    if recipe != "baseline":
        crop, flip = sample_crop_flip(size, size, rng)
        out.update(crop=np.asarray(crop, dtype=np.int64), flip=flip)
    return out


def val_view(img: Image.Image, boxes, resize: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize + center crop, and the boxes (0-based edges) mapped into the crop
    and clipped to it; boxes that fall outside the crop are dropped."""
    w, h = img.size
    scale_w, scale_h = _resized(w, h, resize)
    out = center_view(img, resize, size)
    top, left = int(round((scale_h - size) / 2.0)), int(round((scale_w - size) / 2.0))
    mapped = []
    for x0, y0, x1, y1 in boxes if boxes is not None else []:
        b = np.array([x0 * scale_w / w - left, y0 * scale_h / h - top,
                      x1 * scale_w / w - left, y1 * scale_h / h - top]).clip(0, size)
        if b[2] > b[0] and b[3] > b[1]:
            mapped.append(b)
    return np.asarray(out), np.asarray(mapped, dtype=np.float32).reshape(-1, 4)


def _resized(w: int, h: int, resize: int) -> tuple[int, int]:
    """Output size of torchvision's Resize(resize) (short side -> resize)."""
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize
