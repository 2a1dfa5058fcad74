"""Content Heatmap (CH): the share of a Grad-CAM heatmap that lies inside the
ground-truth boxes of the image's class (CGC paper, Table 2).

The authors' protocol (TorchRay/torchray/benchmark/
evaluate_imagenet_gradcam_energy_inside_bbox.py, run with input_resize 448):

1. resize the image so that its short side is 448 (no crop), normalise;
2. Grad-CAM of the ground-truth class at `layer4`, model in eval mode;
3. divide the map by (sum + 1e-8) and add 1e-8, upsample it bilinearly
   (align_corners=False) to the ORIGINAL image size, divide by its sum;
4. CH = the mass of that map inside the union of the class's boxes.

Their script skipped maps that summed to <= 0, which the + 1e-8 rules out: an
all-zero map becomes uniform and scores the area fraction of the boxes, and
every image counts, here as there. They resized the input with PIL and the map
with cv2; here both use torch (torchvision's tensor `resize`, antialias=True,
and `F.interpolate`, the same half-pixel bilinear as cv2 for upsampling).

`protocol="center_crop"` is the usual ImageNet view instead: resize 256,
centre-crop 224, boxes mapped into the crop and clipped, CH on the 224 map;
`protocol="squash"` resizes to 224x224 (RISE's preprocessing).

Boxes are [x0, y0, x1, y1], 0-based half-open pixel edges in ORIGINAL image
pixels; a pixel counts as inside when its centre is, i.e. x0 <= x < x1 and
y0 <= y < y1 for integer edges. Boxes that leave the image are clamped to it
and counted; an image none of whose boxes has area inside it is not scored
(CH NaN, counted as "no usable box"), rather than scored 0.

`content_heatmap_single` is the reference (one image per forward);
`content_heatmap` groups the images by input shape and runs each group in
batches on the model's device, with the same results. (Both stay in this one
module, over 300 lines, so that the protocol and its batched form are read,
and changed, side by side.)
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from cgc_ray.data.manifest import has_area
from cgc_ray.geometry import IMAGENET_MEAN, IMAGENET_STD, center_crop_offset, resize_short_side
from cgc_ray.gradcam import EPS, CamNet, gradcam_autograd, gradcam_closed_form

PROTOCOLS = ("resize", "center_crop", "squash")


@dataclass
class ContentHeatmapResult:
    ch: torch.Tensor  # (N,) float64, CH of each image in [0, 1]; NaN: no box with area inside the image
    clamped: int      # boxes that had to be clamped to their image

    @property
    def unusable(self) -> int:
        """Images not scored: none of their boxes has any area inside the image."""
        return int(self.ch.isnan().sum())

    @property
    def mean_percent(self) -> float:
        """Mean CH in percent over the scored images (NaN when none was)."""
        return 100.0 * float(self.ch.nanmean())


@dataclass(frozen=True)
class Geometry:
    """Where an image goes under a protocol: `resize` (h, w) after resizing,
    `crop` (top, left, h, w) of the model input in the resized image, `heat`
    (h, w) the size at which the heatmap is scored."""
    resize: tuple[int, int]
    crop: tuple[int, int, int, int]
    heat: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]


def geometry(height: int, width: int, protocol: str = "resize",
             short_side: int = 448, resize: int = 256, crop: int = 224) -> Geometry:
    """The `Geometry` of an image of size (height, width) under `protocol`."""
    if protocol == "resize":
        h, w = resize_short_side(height, width, short_side)
        return Geometry((h, w), (0, 0, h, w), (height, width))
    if protocol == "center_crop":
        h, w = resize_short_side(height, width, resize)
        top, left = center_crop_offset(h, w, crop, crop)
        return Geometry((h, w), (top, left, crop, crop), (crop, crop))
    if protocol == "squash":
        return Geometry((crop, crop), (0, 0, crop, crop), (crop, crop))
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def image_size(image) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) image or a float (3, H, W) tensor."""
    t = torch.as_tensor(image)
    return tuple(t.shape[:2]) if t.dtype == torch.uint8 else tuple(t.shape[-2:])


def preprocess(image, geom: Geometry, device=None) -> torch.Tensor:
    """The normalised model input (3, h, w): resize (bilinear, antialias), crop, normalise.

    image: uint8 (H, W, 3) array or tensor, or float (3, H, W) tensor in [0, 1].
    """
    x = torch.as_tensor(image).to(device)
    x = x.permute(2, 0, 1).float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return _resize_crop_normalize(x, geom)


def preprocess_batch(images, geom: Geometry, device=None) -> torch.Tensor:
    """`preprocess` of same-size images (B, 3, h, w): one upload, one resize."""
    ts = [torch.as_tensor(im) for im in images]
    if all(t.dtype == torch.uint8 for t in ts):
        # contiguous: NCHW as in `preprocess` (a channels_last batch runs other conv kernels)
        x = torch.stack(ts).to(device).permute(0, 3, 1, 2).float().contiguous() / 255.0
    else:
        x = torch.stack([t.permute(2, 0, 1).float() / 255.0 if t.dtype == torch.uint8 else t.float()
                         for t in ts]).to(device)
    return _resize_crop_normalize(x, geom)


def _resize_crop_normalize(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    x = TF.resize(x, list(geom.resize), antialias=True)
    top, left, h, w = geom.crop
    return TF.normalize(x[..., top:top + h, left:left + w], IMAGENET_MEAN, IMAGENET_STD)


def usable(boxes, height: int, width: int) -> bool:
    """Whether any of the boxes (n, 4) has area inside a height x width image
    (the manifest's rule, `has_area`): an image without one has no content to
    score (CH NaN, counted), not CH 0."""
    rows = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist()
    return any(has_area(box, width, height) for box in rows)


def clamp_boxes(boxes, height: int, width: int) -> tuple[torch.Tensor, int]:
    """Boxes (n, 4) clamped to the image, float64, and how many needed it."""
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    out = b.clone()
    out[:, 0::2] = b[:, 0::2].clamp(0, width)
    out[:, 1::2] = b[:, 1::2].clamp(0, height)
    return out, int((out != b).any(1).sum())


def box_mask(boxes: torch.Tensor, height: int, width: int, device=None) -> torch.Tensor:
    """Union of boxes (n, 4) as a (height, width) bool mask, by pixel centres."""
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    in_y = ((ys >= b[:, 1:2]) & (ys < b[:, 3:4])).to(device)  # (n, H)
    in_x = ((xs >= b[:, 0:1]) & (xs < b[:, 2:3])).to(device)  # (n, W)
    return (in_y[:, :, None] & in_x[:, None, :]).any(0)


def heatmap_boxes(boxes, size: tuple[int, int], geom: Geometry) -> tuple[torch.Tensor, int]:
    """Boxes from original pixels to heatmap pixels, clipped; and the clamp count."""
    (height, width), (rh, rw), (top, left, ch, cw), (hh, hw) = size, geom.resize, geom.crop, geom.heat
    b, clamped = clamp_boxes(boxes, height, width)
    b[:, 0::2] = ((b[:, 0::2] * (rw / width) - left) * (hw / cw)).clamp(0, hw)
    b[:, 1::2] = ((b[:, 1::2] * (rh / height) - top) * (hh / ch)).clamp(0, hh)
    return b, clamped


def content(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mass inside `mask` (H, W) of the authors' normalised heatmap of `cam` (h, w)."""
    low = cam / (cam.sum() + EPS) + EPS
    up = F.interpolate(low[None, None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
    up = up.double()
    return (up * mask).sum() / up.sum()


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`box_mask` of each image's boxes (B, n, 4) at once: (B, height, width)
    bool, on the boxes' device; all-zero rows (padding) contain no pixel."""
    ys = torch.arange(height, dtype=torch.float64, device=boxes.device) + 0.5
    xs = torch.arange(width, dtype=torch.float64, device=boxes.device) + 0.5
    in_y = (ys >= boxes[..., 1:2]) & (ys < boxes[..., 3:4])  # (B, n, H)
    in_x = (xs >= boxes[..., 0:1]) & (xs < boxes[..., 2:3])  # (B, n, W)
    mask = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=boxes.device)
    for k in range(boxes.shape[1]):
        mask |= in_y[:, k, :, None] & in_x[:, k, None, :]
    return mask


def contents(cams: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`content` of each map (B, h, w) in its mask (B, H, W): (B,) float64."""
    low = cams / (cams.sum((1, 2), keepdim=True) + EPS) + EPS
    up = F.interpolate(low[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    up = up.double()
    return (up * masks).sum((1, 2)) / up.sum((1, 2))


@contextmanager
def evaluating(model: nn.Module, bn_train: bool = False):
    """Run `model` in eval mode (BatchNorm in train mode if `bn_train`, its
    running statistics restored afterwards); every module's mode is restored."""
    modes = [(m, m.training) for m in model.modules()]
    bns = [m for m in model.modules() if bn_train and isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in m.buffers()] for m in bns]
    model.eval()
    for m in bns:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, bufs in zip(bns, saved):
                for b, s in zip(m.buffers(), bufs):
                    b.copy_(s)
        for m, training in modes:
            m.training = training


@contextmanager
def cam_net(model: nn.Module, layer: str = "layer4"):
    """A `CamNet` on `model`, its hook removed on exit."""
    net = CamNet(model, layer)
    try:
        yield net
    finally:
        net.remove()


def class_gradcam(net: CamNet, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and Grad-CAM (B, h, w) of class `target`, detached: closed form
    where `net` has a GAP + linear head after its layer, else autograd."""
    fc = net.linear_head()
    if fc is not None:
        with torch.no_grad():
            logits, feats = net(x)
            return logits, gradcam_closed_form(feats, fc.weight, target)
    with torch.enable_grad():
        logits, feats = net(x.detach().requires_grad_())
        cam = gradcam_autograd(logits, feats, target, per_image=net.batch_coupled, create_graph=False)
    return logits.detach(), cam.detach()


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def content_heatmap_single(model: nn.Module, image, boxes, label: int, *, layer: str = "layer4",
                           protocol: str = "resize", short_side: int = 448,
                           eval_mode: bool = True) -> tuple[float, int]:
    """CH of one image, one forward: (CH in [0, 1], number of boxes clamped)."""
    device = model_device(model)
    size = image_size(image)
    geom = geometry(*size, protocol=protocol, short_side=short_side)
    mapped, clamped = heatmap_boxes(boxes, size, geom)
    with (evaluating(model) if eval_mode else nullcontext()), cam_net(model, layer) as net:
        x = preprocess(image, geom, device)[None]
        _, cam = class_gradcam(net, x, torch.tensor([int(label)], device=device))
    if not usable(boxes, *size):
        return math.nan, clamped
    return float(content(cam[0], box_mask(mapped, *geom.heat, device))), clamped


def content_heatmap(model: nn.Module, images, boxes, labels, *, layer: str = "layer4",
                    protocol: str = "resize", short_side: int = 448, batch_size: int = 32,
                    eval_mode: bool = True) -> ContentHeatmapResult:
    """Content Heatmap of many images (the protocol in the module docstring:
    TorchRay's energy-inside-box as the CGC authors ran it, their Table 2):
    images with the same input shape run as one batch (up to `batch_size`)
    on the model's device; equal to `content_heatmap_single`.

    images: sequence of uint8 (H, W, 3) arrays/tensors or float (3, H, W)
    tensors in [0, 1]; boxes: per image an (n, 4) array of its class's boxes,
    [x0, y0, x1, y1] 0-based pixel edges of the original image; labels: int,
    the class explained (the ground truth). `protocol`/`short_side` (pixels):
    the input geometry. `eval_mode=False` keeps the model's own mode (in
    train mode BatchNorm makes a map depend on its batch mates). Returns a
    ContentHeatmapResult: ch float64 (N,) in [0, 1] (NaN where no box has
    area inside the image), clamped boxes counted. Raises ValueError for an
    unknown protocol or a layer the model lacks.
    Each batch is preprocessed, and its maps scored, per original image size
    (one resize, one upsampling, one mask build per size); the device is
    synchronised once, at the end.
    """
    device = model_device(model)
    sizes = [image_size(im) for im in images]
    geoms = [geometry(*s, protocol=protocol, short_side=short_side) for s in sizes]
    buckets = defaultdict(list)
    for i, g in enumerate(geoms):
        buckets[g.input_size].append(i)
    order, scores, clamped = [], [], 0
    with (evaluating(model) if eval_mode else nullcontext()), cam_net(model, layer) as net:
        for bucket in buckets.values():
            for s in range(0, len(bucket), batch_size):
                by_size = _by_size(bucket[s:s + batch_size], sizes)
                x = torch.cat([preprocess_batch([images[i] for i in g], geoms[g[0]], device) for g in by_size])
                chunk = [i for g in by_size for i in g]
                _, cams = class_gradcam(net, x, torch.tensor([int(labels[i]) for i in chunk], device=device))
                for g, cam in zip(by_size, cams.split([len(g) for g in by_size])):
                    mass, n = _box_mass(cam, [boxes[i] for i in g], sizes[g[0]], geoms[g[0]])
                    scores.append(mass)
                    clamped += n
                order += chunk
    ch = torch.empty(len(images), dtype=torch.float64)
    if order:
        ch[order] = torch.cat(scores).cpu()
    return ContentHeatmapResult(ch, clamped)


# elements of the (B, H, W) float64 maps scored at once (128 MiB)
MAX_MASS_ELEMENTS = 1 << 24


def _box_mass(cams: torch.Tensor, boxes: list, size: tuple[int, int], geom: Geometry) -> tuple[torch.Tensor, int]:
    """`content` of the maps (B, h, w) of images of one original `size`, and
    the clamp count: all boxes mapped at once, masks and upsampling in slices
    of bounded memory."""
    per_image = [torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4) for b in boxes]
    padded = torch.zeros(len(boxes), max(1, *(len(b) for b in per_image)), 4, dtype=torch.float64)
    for i, b in enumerate(per_image):
        padded[i, :len(b)] = b  # (0, 0, 0, 0) rows stay empty boxes: never clamped, no pixel
    mapped, clamped = heatmap_boxes(padded.reshape(-1, 4), size, geom)
    mapped = mapped.reshape(padded.shape).to(cams.device)
    step = max(1, MAX_MASS_ELEMENTS // (geom.heat[0] * geom.heat[1]))
    mass = [contents(cams[s:s + step], box_masks(mapped[s:s + step], *geom.heat)) for s in range(0, len(boxes), step)]
    scored = torch.tensor([usable(b, *size) for b in per_image], device=cams.device)
    return torch.cat(mass).masked_fill(~scored, math.nan), clamped


def _by_size(chunk: list[int], sizes: list[tuple[int, int]]) -> list[list[int]]:
    """`chunk` split into runs of images of one original size, first-seen order."""
    groups = defaultdict(list)
    for i in chunk:
        groups[sizes[i]].append(i)
    return list(groups.values())
