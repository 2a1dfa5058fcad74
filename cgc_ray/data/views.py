"""Decoding and the CPU side of the views (Ray-free).

One decode per image; from it, the views a recipe needs as uint8 HWC arrays:
- "xe": RandomResizedCrop(size) + horizontal flip (p = 0.5) of the full image;
- "image": Resize(resize) + CenterCrop(size);
- "crop"/"flip": the parameters of T, in pixels of the query view ("image" for
  the official recipe, "xe" for two_view). The "aug" view itself is made on the
  training device from the query (`batches.to_device`), so the CPU neither
  decodes nor resizes twice.
Validation: Resize(resize) + CenterCrop(size), with boxes mapped into the crop.

Both views are PIL's antialiased bilinear resampling (what torchvision's
transforms run on PIL images) of a source box, resampled straight from the
decoded image: "xe" is bit-identical to torchvision's `resized_crop`; "image"
skips the intermediate Resize(resize) image and differs from torchvision's
Resize + CenterCrop by at most 1 grey level (float rounding of the filter
positions; `tests/test_data_views.py`).
"""

from __future__ import annotations

import io
import math
import zlib

import numpy as np
from PIL import Image, ImageFile

from ..geometry import center_crop_offset, resize_short_side
from ..transforms import draw_train_params, sample_crop_flip

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey image
RECIPE_VIEWS = {"official": ("xe", "image"), "two_view": ("xe",), "baseline": ("xe",)}
DRAFT_SCALES = (8, 4, 2)  # JPEG DCT scaling: decode at 1/8, 1/4 or 1/2 of the size
_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImage(ValueError):
    """The bytes are not a decodable image (empty, truncated, corrupt)."""


def open_image(data: bytes) -> Image.Image:
    """The image with its header read (size, format, mode), not yet decoded."""
    if not data:
        raise BadImage("zero-byte file")
    try:
        return Image.open(io.BytesIO(data))
    except _ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from e


def load_rgb(img: Image.Image, scale: int = 1) -> tuple[Image.Image, float]:
    """Decode an opened image as RGB, reduced by `scale` through JPEG DCT
    scaling where the format has it; returns the image and the reduction
    applied (1.0 for other formats or scale 1)."""
    applied = 1.0
    try:
        if scale > 1:
            w, h = img.size
            drafted = img.draft("RGB", (w // scale, h // scale))
            applied = w / drafted[1][2] if drafted else 1.0
        img.load()
        return _to_rgb(img), applied
    except _ERRORS as e:
        raise BadImage(str(e) or type(e).__name__) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode. Pillow's own convert("RGB") clips high-bit-depth grey
    (16-bit PNG/TIFF open as I;16 or I) to white; those are scaled to 8 bits
    (value >> 8) instead. Float pixels (mode F) have no defined scale: refused."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:  # mode I holds 8-bit data in some files
            a = np.clip(a, 0, 65535) >> 8
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise BadImage("32-bit float pixels (Pillow mode F) have no defined 8-bit scale")
    return img.convert("RGB")


def decode_rgb(data: bytes) -> Image.Image:
    """Any PIL-readable bytes as RGB, full size: greyscale, CMYK and
    PNG-inside-.JPEG included (the format is read from the content)."""
    return load_rgb(open_image(data))[0]


def draft_scale(w: int, h: int, crop_hw: tuple[int, int], size: int, resize: int | None) -> int:
    """The largest DCT reduction that keeps every view a downscale: the
    RandomResizedCrop box (crop_hw, pixels of the w x h image) still spans
    >= size pixels a side, and the short side stays >= resize (None: no
    Resize view). 1 (full decode) when no reduction qualifies."""
    for s in DRAFT_SCALES:
        if min(crop_hw) / s >= size and (resize is None or min(w, h) / s >= resize):
            return s
    return 1


def decode_train_views(data: bytes, recipe: str, size: int, resize: int, rng: np.random.Generator,
                       draft: bool = True) -> dict:
    """train_views of the image in `data`, decoded once and, with `draft`, at
    the smallest DCT scale that `draft_scale` allows for the sampled crop.

    Exactness: a reduced decode averages s x s pixels in the DCT before the
    bilinear resampling, so views differ from the full decode's by a few grey
    levels at sharp edges (a different low-pass, not a different geometry: the
    boxes are the same in full-image pixels); both are downscales, never
    upsampling (`tests/test_data_views.py` bounds the difference).
    """
    img = open_image(data)
    w, h = img.size
    params = draw_train_params(h, w, recipe, size, rng)
    scale = draft_scale(w, h, params["xe_box"][2:], size, resize if recipe == "official" else None) if draft else 1
    img, applied = load_rgb(img, scale)
    return _train_views(img, applied, (w, h), params, recipe, size, resize)


def train_views(img: Image.Image, recipe: str, size: int, resize: int, rng: np.random.Generator) -> dict:
    """The recipe's CPU views of one decoded (full-size) image, plus T's parameters."""
    w, h = img.size
    return _train_views(img, 1.0, (w, h), draw_train_params(h, w, recipe, size, rng), recipe, size, resize)


def _train_views(img, scale, full_wh, params: dict, recipe, size, resize) -> dict:
    top, left, ch, cw = params["xe_box"]
    xe = _crop_resize(img, [v / scale for v in (left, top, left + cw, top + ch)], size)
    if params["xe_flip"]:
        xe = xe.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = {"xe": np.asarray(xe)}
    if recipe == "official":
        out["image"] = np.asarray(_center_view(img, scale, full_wh, resize, size))
    if recipe != "baseline":
        out.update(crop=params["crop"], flip=params["flip"])
    return out


def _crop_resize(img: Image.Image, box, size: int) -> Image.Image:
    """torchvision's resized_crop for a (possibly fractional) box (left, top,
    right, bottom): the filter sees only the pixels of the box's enclosing crop."""
    left, top = math.floor(box[0]), math.floor(box[1])
    crop = img.crop((left, top, math.ceil(box[2]), math.ceil(box[3])))
    return crop.resize((size, size), Image.BILINEAR,
                       box=(box[0] - left, box[1] - top, box[2] - left, box[3] - top))


def _center_view(img: Image.Image, scale: float, full_wh, resize: int, size: int) -> Image.Image:
    """Resize(resize) + CenterCrop(size) of the full_wh image, as one resampling
    of the crop's source box from img (decoded at 1/scale)."""
    w, h = full_wh
    nh, nw = resize_short_side(h, w, resize)
    top, left = center_crop_offset(nh, nw, size, size)
    sx, sy = w / nw / scale, h / nh / scale
    return img.resize((size, size), Image.BILINEAR,
                      box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def center_view(img: Image.Image, resize: int, size: int) -> Image.Image:
    return _center_view(img, 1.0, img.size, resize, size)


def val_transform(uri: str, size: int, seed: int) -> tuple[list[int], bool]:
    """T for the validation CGC loss: fixed by (seed, URI), so epochs and
    evaluations are comparable."""
    return sample_crop_flip(size, size, np.random.default_rng([seed, zlib.crc32(uri.encode())]))


def val_view(img: Image.Image, boxes, resize: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize + center crop, and the boxes (0-based edges) mapped into the crop
    and clipped to it; boxes that fall outside the crop are dropped."""
    w, h = img.size
    scale_h, scale_w = resize_short_side(h, w, resize)
    out = center_view(img, resize, size)
    top, left = center_crop_offset(scale_h, scale_w, size, size)
    mapped = []
    for x0, y0, x1, y1 in boxes if boxes is not None else []:
        b = np.array([x0 * scale_w / w - left, y0 * scale_h / h - top,
                      x1 * scale_w / w - left, y1 * scale_h / h - top]).clip(0, size)
        if b[2] > b[0] and b[3] > b[1]:
            mapped.append(b)
    return np.asarray(out), np.asarray(mapped, dtype=np.float32).reshape(-1, 4)

