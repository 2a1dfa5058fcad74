"""Insertion AUC (Petsiuk et al., RISE, 2018), as the CGC authors ran it
(RISE/evaluate_auc_metrics.py + RISE/evaluation.py of UCDvision/CGC).

For a normalised image x (224x224 in their setting) and its heatmap:

- the canvas starts as x blurred with RISE's kernel: scipy's gaussian_filter
  (sigma 5, mode 'reflect', truncate 4) of an 11x11 delta, applied per
  channel as a conv2d with zero padding 5 (not torchvision's gaussian_blur);
- pixels of x are inserted from the highest heatmap value to the lowest,
  `step` = 224 * 8 at a time: 224*224 / step = 28 steps, 29 canvases from the
  fully blurred one to x itself;
- each canvas scores the softmax probability of the class the model predicts
  on x; AUC = (sum(s) - s[0]/2 - s[-1]/2) / (n - 1), the trapezoid rule on
  [0, 1]; the metric is its mean over the images.

The heatmap is the Grad-CAM of the ground-truth class at `layer4`, upsampled
bilinearly (align_corners=False) to the image size. Their pytorch_grad_cam also
min-max scaled it, which leaves the order unchanged. Equal heatmap values are
ordered by flat index, lowest first (a stable descending sort); theirs came
from np.flip(np.argsort(...)), an unstable sort reversed.

Scores are always taken in eval mode. Their script computed the maps after
`net.train()`: BatchNorm normalised with the statistics of each batch of 100
images (so a map depended on its batch mates) and updated its running
statistics with the validation images, which then also shifted the eval-mode
scores. `bn_train_mode_for_maps=True` reproduces the first part, with batches
of `batch_size` images, and restores the running statistics afterwards.

Their preprocessing (RISE's utils.preprocess) squashed each image to 224x224:
`preprocess(image, geometry(h, w, "squash"))` from `content_heatmap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cgc_ray.evaluation.content_heatmap import cam_net, class_gradcam, evaluating, model_device

STEP = 224 * 8


@dataclass
class InsertionResult:
    auc: torch.Tensor     # (N,) insertion AUC of each image
    curves: torch.Tensor  # (N, n_steps + 1) score after each step
    pred: torch.Tensor    # (N,) class predicted on the clean image, the one scored

    @property
    def mean(self) -> float:
        return float(self.auc.mean())


def rise_kernel(klen: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> torch.Tensor:
    """RISE's blur kernel (klen, klen): scipy.ndimage.gaussian_filter(delta, sigma)
    of a centred delta, computed in closed form (no scipy needed).

    gaussian_filter is separable; in mode 'reflect' the delta at c in a line of
    length n repeats with period 2n, mirrored at 2n - 1 - c, and each output
    sums the Gaussian weights (radius int(truncate*sigma + .5), normalised) of
    the copies in reach.
    """
    r = int(truncate * sigma + 0.5)
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    g /= g.sum()
    c, period = klen // 2, 2 * klen
    i = torch.arange(klen)
    k = torch.zeros(klen, dtype=torch.float64)
    for m in range(-(r // period) - 1, r // period + 2):
        for copy in (c + period * m, period - 1 - c + period * m):
            d = copy - i
            k += torch.where(d.abs() <= r, g[(d + r).clamp(0, 2 * r)], 0.0)
    return torch.outer(k, k).float()


def blur(images: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's substrate: each channel of (B, C, H, W) convolved with `rise_kernel`, zero padding."""
    c = images.shape[1]
    k = rise_kernel(klen, sigma).to(images)
    return F.conv2d(images, k.expand(c, 1, klen, klen), padding=klen // 2, groups=c)


def insertion_order(heatmaps: torch.Tensor) -> torch.Tensor:
    """Flat pixel indices (B, H*W), highest value first; ties: lower index first."""
    return torch.argsort(heatmaps.flatten(1), dim=1, descending=True, stable=True)


def auc(scores: torch.Tensor) -> torch.Tensor:
    """RISE's normalised area under the curve(s) `scores` (..., n)."""
    return (scores.sum(-1) - scores[..., 0] / 2 - scores[..., -1] / 2) / (scores.shape[-1] - 1)


def insertion_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   layer: str = "layer4", bn_train_mode: bool = False) -> torch.Tensor:
    """Grad-CAM (B, H, W) of `labels`, upsampled bilinearly to the image size."""
    with evaluating(model, bn_train=bn_train_mode), cam_net(model, layer) as net:
        _, cam = class_gradcam(net, images, labels)
    return F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _curves(model, x, heatmaps, step, klen, sigma, max_batch):
    """Insertion curves (B, n) and predicted classes of images x (B, C, H, W):
    all canvases of all images, `max_batch` canvases per forward."""
    b, _, h, w = x.shape
    n = math.ceil(h * w / step) + 1
    order = insertion_order(heatmaps)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    blurred = blur(x, klen, sigma)
    probs = []
    with evaluating(model), torch.no_grad():
        for rows in torch.arange(b * n, device=x.device).split(max_batch):
            i, k = rows // n, rows % n  # image, step
            keep = (rank[i] < (k * step)[:, None]).view(-1, 1, h, w)
            probs.append(model(torch.where(keep, x[i], blurred[i])).float().softmax(1))
    probs = torch.cat(probs).view(b, n, -1)
    pred = probs[:, -1].argmax(1)  # the last canvas is the clean image
    return probs.gather(2, pred.view(b, 1, 1).expand(b, n, 1))[..., 0], pred


def insertion_auc(model: nn.Module, images: torch.Tensor, labels, *, heatmaps: torch.Tensor | None = None,
                  layer: str = "layer4", step: int = STEP, klen: int = 11, sigma: float = 5.0,
                  batch_size: int = 32, max_batch: int = 256,
                  bn_train_mode_for_maps: bool = False) -> InsertionResult:
    """Insertion AUC (RISE: Petsiuk et al., BMVC 2018, Sec. 4), batched on the model's device.

    images: float (N, 3, H, W), ImageNet-normalised. labels: int (N,), the
    class whose Grad-CAM orders the pixels, unless `heatmaps` float (N, H, W)
    are given. Starting from the image blurred (Gaussian, `klen` x `klen`,
    `sigma` pixels, as RISE), `step` pixels of the clean image are inserted
    per canvas, highest heatmap value first (ties: lower flat index); each
    canvas is scored by the softmax probability of the class predicted on
    the clean image. Images go `batch_size` at a time (the batch of the
    maps, in BatchNorm train mode with `bn_train_mode_for_maps`, as the
    authors did), their canvases `max_batch` per forward. Returns an
    InsertionResult: auc float64 (N,) in [0, 1] (trapezoid over canvases,
    x from 0 to 1), the curves (N, canvases) and the predicted classes (N,).
    Equals `insertion_auc_single` image by image.
    """
    device = model_device(model)
    labels = torch.as_tensor(labels)
    curves, preds = [], []
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(device)
        if heatmaps is None:
            maps = insertion_maps(model, x, labels[s:s + batch_size].to(device), layer=layer,
                                  bn_train_mode=bn_train_mode_for_maps)
        else:
            maps = heatmaps[s:s + batch_size].to(device)
        curve, pred = _curves(model, x, maps, step, klen, sigma, max_batch)
        curves.append(curve.cpu())
        preds.append(pred.cpu())
    curves = torch.cat(curves).double()
    return InsertionResult(auc(curves), curves, torch.cat(preds))


def insertion_auc_single(model: nn.Module, image: torch.Tensor, label: int, *,
                         heatmap: torch.Tensor | None = None, layer: str = "layer4",
                         step: int = STEP, klen: int = 11, sigma: float = 5.0) -> tuple[float, torch.Tensor]:
    """The authors' loop (RISE CausalMetric.single_run) on one normalised image
    (C, H, W): one canvas per forward. Returns (AUC, curve (n_steps + 1,)).

    Compared with `insertion_auc`, pass the maps the batched run used: the float
    noise between a batched and a one-image forward can swap near-equal heatmap
    values across a step boundary (bilinear upsampling makes many of them).
    """
    device = model_device(model)
    x = image[None].to(device)
    if heatmap is None:
        heatmap = insertion_maps(model, x, torch.tensor([int(label)], device=device), layer=layer)[0]
    hw = x.shape[-2] * x.shape[-1]
    n_steps = math.ceil(hw / step)
    order = insertion_order(heatmap[None].to(device))[0]
    start, finish = blur(x, klen, sigma).view(x.shape[1], hw), x.reshape(x.shape[1], hw)
    scores = []
    with evaluating(model), torch.no_grad():
        c = int(model(x).argmax(1))
        for i in range(n_steps + 1):
            scores.append(float(model(start.view_as(x)).float().softmax(1)[0, c]))
            coords = order[step * i:step * (i + 1)]
            start[:, coords] = finish[:, coords]
    curve = torch.tensor(scores, dtype=torch.float64)
    return float(auc(curve)), curve
