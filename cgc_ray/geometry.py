"""Image geometry and normalisation shared by the training views, the device
decoder and the evaluation protocols (Ray-free). Sizes are (height, width)
everywhere, as torch tensors are laid out; PIL's (width, height) is converted
where PIL is called."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of images scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_short_side(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) output (height, width) in pixels: the short
    side becomes `size`, the long side scaled and floored."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_offset(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(top, left) of a crop_h x crop_w centre crop of a height x width image,
    rounded as torchvision's center_crop does."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
