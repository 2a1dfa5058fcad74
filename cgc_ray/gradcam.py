"""Differentiable Grad-CAM.

Grad-CAM of class c at a conv layer with activations A (B, K, h, w):
weights = spatial mean of d logit_c / dA, map = ReLU(sum_k weight_k * A_k).

Two ways to compute it, equal where both apply:
- `gradcam_autograd`: any layer of any model, via autograd.grad with
  create_graph=True so a loss on the map back-propagates (double backward);
- `gradcam_closed_form`: for a layer followed by global average pooling and a
  linear head, d logit_c / dA = W[c] / (h*w) at every position, so the map is
  ReLU(W[c] . A) / (h*w): no second backward pass at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 at least: maps and losses stay out of bf16/fp16 autocast."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class CamNet(nn.Module):
    """A classifier that also returns the activations of one of its layers.

    forward(x) -> (logits, features); forward(x1, x2, ...) -> one such pair
    per view, each view forwarded on its own (per-view BatchNorm statistics) in
    one call, so that DDP sees a single forward per step. The activations are
    caught by a forward hook on `layer`, so any torchvision classifier works
    unchanged (wrap the CamNet in DDP or compile it as a whole).

    After each forward, `batch_coupled` says whether a BatchNorm that uses
    batch statistics (train mode, or no running statistics) ran after `layer`:
    then one image's logits depend on the other images' activations, and
    Grad-CAM must take each image's own gradient (`gradcam_autograd(...,
    per_image=True)`). ResNet's layer4 is never coupled; layer3 in training is.
    """

    def __init__(self, model: nn.Module, layer: str = "layer4"):
        super().__init__()
        self.model = model
        self.layer = layer
        try:
            target = model.get_submodule(layer)
        except AttributeError as e:
            names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Sequential))]
            raise ValueError(f"model has no layer {layer!r}; conv layers and blocks: {names[-8:]}") from e
        self._caught: list[tuple[torch.Tensor, int]] = []
        self.batch_coupled = False
        self._hooks = [target.register_forward_hook(
            lambda _m, _i, out: self._caught.append((out, getattr(out, "_version", None))))]
        self._hooks += [m.register_forward_pre_hook(self._saw_norm) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def remove(self) -> None:
        """Take the hooks off the wrapped model."""
        for hook in self._hooks:
            hook.remove()

    def _saw_norm(self, norm: nn.Module, _inputs) -> None:
        # BatchNorm normalises with batch statistics in training or without running ones
        if self._caught and (norm.training or norm.running_mean is None):
            self.batch_coupled = True

    def forward(self, x: torch.Tensor, *more: torch.Tensor):
        pairs = [self._one(v) for v in (x, *more)]
        return pairs if more else pairs[0]

    def _one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._caught.clear()
        self.batch_coupled = False
        logits = self.model(x)
        if len(self._caught) != 1:
            raise UnsuitableLayer(f"layer {self.layer!r} ran {len(self._caught)} times in one forward; "
                                  "Grad-CAM needs a layer that runs exactly once")
        feats, version = self._caught.pop()
        if not isinstance(feats, torch.Tensor):
            raise UnsuitableLayer(f"layer {self.layer!r} gives a {type(feats).__name__}, not a feature map tensor")
        if feats._version != version:  # e.g. `out += identity` or ReLU(inplace=True) after a BatchNorm
            raise InPlaceLayer(f"layer {self.layer!r}: its output is changed in place later in the forward, so the "
                               "map Grad-CAM would see is another layer's; explain the block or activation that "
                               "ends the in-place chain instead (e.g. 'layer4.1' rather than 'layer4.1.bn2')")
        return logits, feats

    def linear_head(self) -> nn.Linear | None:
        """The GAP + linear head that follows `layer`, if the model has that shape."""
        fc = getattr(self.model, "fc", None)
        pool = getattr(self.model, "avgpool", None)
        is_gap = isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
        if self.layer == "layer4" and isinstance(fc, nn.Linear) and is_gap:
            return fc
        return None


class UnsuitableLayer(ValueError):
    """The layer cannot be explained: it runs other than once a forward, or (InPlaceLayer)
    its output is modified in place by a later operation."""


class InPlaceLayer(UnsuitableLayer):
    """The explained layer's output is modified in place by a later operation."""


def find_camnet(net: nn.Module) -> CamNet | None:
    """The CamNet inside `net` (itself, or under DDP's `.module` / torch.compile's
    `._orig_mod`), or None when `net` holds none."""
    while not isinstance(net, CamNet):
        inner = getattr(net, "module", None) or getattr(net, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        net = inner
    return net


def unwrap(net: nn.Module) -> CamNet:
    """`find_camnet`, for a net known to hold one; ValueError otherwise."""
    found = find_camnet(net)
    if found is None:
        raise ValueError(f"{type(net).__name__} is not a CamNet, nor one wrapped in DDP or torch.compile")
    return found


def gradcam_autograd(logits: torch.Tensor, feats: torch.Tensor, target: torch.Tensor,
                     per_image: bool = False, create_graph: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2), differentiable (create_graph).

    logits: (B, classes); feats: (B, K, h, w) activations `logits` were computed
    from; target: int64 (B,) class per image. Returns float32 (B, h, w).

    per_image=False differentiates the sum of the B target logits at once:
    exact when image i's logits depend on feats[i] alone. Where they do not
    (a batch-statistics BatchNorm after the layer: `CamNet.batch_coupled`),
    per_image=True takes the diagonal blocks d logit_i / d feats[i] of the
    Jacobian, vectorised over images, so no image's map depends on another
    image's target: B backward passes' work, each chunk's gradients at most
    ~PER_IMAGE_ELEMENTS elements; with create_graph the graph kept for the
    double backward still grows with B^2 x the activations' size.
    create_graph=False (evaluation: maps only) keeps no graph.
    """
    score = logits.gather(1, target[:, None])[:, 0]
    if per_image:
        grad = _per_image_grad(score, feats, create_graph)
    else:
        grad = torch.autograd.grad(score.sum(), feats, create_graph=create_graph)[0]
    weights = fp32(grad).mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * fp32(feats)).sum(1))


PER_IMAGE_ELEMENTS = 1 << 26  # 256 MiB of fp32 gradients per chunk


def _per_image_grad(score: torch.Tensor, feats: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d score[i] / d feats[i] for every i: (B, K, h, w)."""
    b = score.shape[0]
    eye = torch.eye(b, dtype=score.dtype, device=score.device)
    chunk = max(1, PER_IMAGE_ELEMENTS // feats.numel())
    rows = []
    for start in range(0, b, chunk):
        sel = eye[start:start + chunk]  # (c, B): one-hot rows for images start..start+c
        grads, = torch.autograd.grad(score, feats, grad_outputs=sel, is_grads_batched=True,
                                     create_graph=create_graph, retain_graph=True)
        idx = torch.arange(start, start + sel.shape[0], device=feats.device)
        rows.append(grads[torch.arange(sel.shape[0], device=feats.device), idx])
    return torch.cat(rows)


def gradcam_closed_form(feats: torch.Tensor, fc_weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (B, h, w) for a GAP + linear head: ReLU(W[target] . A) / (h*w)."""
    h, w = feats.shape[-2:]
    cam = torch.einsum("bkhw,bk->bhw", fp32(feats), fp32(fc_weight)[target])
    return F.relu(cam) / (h * w)


def normalize_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The authors' post-processing: bilinear upsample to `size`
    (align_corners=False), divide by (sum + 1e-8), add 1e-8 — an all-zero map
    becomes uniform instead of NaN."""
    up = F.interpolate(fp32(cam)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return up / (up.sum(dim=(1, 2), keepdim=True) + EPS) + EPS
