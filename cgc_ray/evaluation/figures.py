"""Grad-CAM figures (Ray-free), as the paper's Figures 3-8: one row per image,
the image with its boxes, then each checkpoint's Grad-CAM overlay.

The heatmap is the one CH scores: the class's Grad-CAM under the CH protocol
(`resize`: the whole image, short side 448 in; `center_crop`: the 224 crop),
upsampled bilinearly to the scored view and min-max scaled for display. Every
cell is `cell` x `cell` pixels (the view fitted inside, aspect kept), under a
header row of `header` pixels with the column titles, so a grid of K images
and M checkpoints is (1 + M) * cell wide and header + K * cell high.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

from .content_heatmap import (
    cam_net, class_gradcam, evaluating, geometry, heatmap_boxes, model_device, preprocess,
)

CELL, HEADER = 224, 24


def heatmap_view(model, image: np.ndarray, boxes, target: int, *, layer: str = "layer4",
                 protocol: str = "resize", short_side: int = 448):
    """(view uint8 (H, W, 3), heatmap (H, W) in [0, 1], boxes (n, 4) in view pixels)
    of one uint8 image under the CH `protocol`, Grad-CAM of class `target`."""
    size = image.shape[:2]
    geom = geometry(*size, protocol=protocol, short_side=short_side)
    device = model_device(model)
    with evaluating(model), cam_net(model, layer) as net:
        _, cam = class_gradcam(net, preprocess(image, geom, device)[None], torch.tensor([int(target)], device=device))
    heat = F.interpolate(cam[None].float(), size=geom.heat, mode="bilinear", align_corners=False)[0, 0].cpu()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    b = heatmap_boxes(boxes, size, geom)[0].numpy() if boxes is not None and len(boxes) else np.zeros((0, 4))
    return _view(image, geom, protocol), heat.numpy(), b


def _view(image: np.ndarray, geom, protocol: str) -> np.ndarray:
    """The pixels CH scores: the image itself (`resize`), else its resized crop."""
    if protocol == "resize":
        return image
    x = TF.resize(torch.as_tensor(image).permute(2, 0, 1), list(geom.resize), antialias=True)
    top, left, h, w = geom.crop
    return x[:, top:top + h, left:left + w].permute(1, 2, 0).numpy()


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1]: (..., 3) uint8."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (255 * rgb).astype(np.uint8)


def panel(view: np.ndarray, boxes, heat: np.ndarray | None = None, caption: str = "",
          cell: int = CELL) -> Image.Image:
    """One cell: the view (with the heatmap blended in, if given) fitted into
    cell x cell on white, the boxes in green, a caption at the top left."""
    img = view if heat is None else (0.5 * view + 0.5 * jet(heat)).astype(np.uint8)
    h, w = img.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = Image.new("RGB", (cell, cell), "white")
    ox, oy = (cell - size[0]) // 2, (cell - size[1]) // 2
    out.paste(Image.fromarray(img).resize(size, Image.BILINEAR), (ox, oy))
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
        if x1 > x0 and y1 > y0:
            draw.rectangle([ox + x0 * scale, oy + y0 * scale, ox + x1 * scale - 1, oy + y1 * scale - 1],
                           outline=(0, 255, 0), width=2)
    if caption:
        draw.text((3, 2), caption, fill=(0, 0, 0))
    return out


def grid(rows: list[list[Image.Image]], titles: list[str], cell: int = CELL, header: int = HEADER) -> Image.Image:
    """Cells (each cell x cell) in rows under a header of column titles."""
    cols = len(titles)
    out = Image.new("RGB", (cols * cell, header + len(rows) * cell), "white")
    draw = ImageDraw.Draw(out)
    for j, title in enumerate(titles):
        draw.text((j * cell + 4, 6), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out.paste(img, (j * cell, header + i * cell))
    return out
