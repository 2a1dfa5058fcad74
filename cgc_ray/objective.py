"""The CGC training objective: cross-entropy + lambda * contrastive Grad-CAM consistency.

Recipes (the batch keys each one reads):
- "official" (the authors' code): "xe" (RandomResizedCrop + flip of the full
  image), "image" (resize 256 + center crop 224: the query), "aug" (T applied
  to "image"), "crop", "flip", "label". CE on all three views, summed.
- "two_view" (the paper's figure, two forwards): "xe" is the query, "aug" is
  T applied to "xe", crop boxes in pixels of "xe". CE on both views.
- "baseline": plain CE on "xe"; no Grad-CAM work at all.

Grad-CAM is taken for the class predicted on the query and used for both
heatmaps. Each view is forwarded on its own, so BatchNorm sees per-view batch
statistics, as in the authors' code. Heatmaps and losses are computed in fp32
whatever the autocast dtype of the forwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import ARRANGEMENTS, NEGATIVES, info_nce, mse_consistency
from .gradcam import CamNet, find_camnet, fp32, gradcam_autograd, gradcam_closed_form, normalize_heatmap, unwrap
from .transforms import check_crops, crop_resize_flip

RECIPES = ("official", "two_view", "baseline")
CAM_METHODS = ("auto", "closed_form", "autograd")
CONSISTENCY = ("infonce", "mse")
VIEWS = {"official": ("xe", "image", "aug"), "two_view": ("xe", "aug"), "baseline": ("xe",)}


@dataclass
class CGCOutput:
    loss: torch.Tensor    # ce + lam * cgc, differentiable
    ce: torch.Tensor      # cross-entropy summed over the recipe's views
    cgc: torch.Tensor     # the consistency loss (0 for the baseline)
    logits: torch.Tensor  # logits of the "xe" view, for training accuracy


@dataclass(frozen=True)
class CGCConfig:
    lam: float = 1.0
    tau: float = 0.5
    recipe: str = "official"
    arrangement: str = "official"  # or "paper"
    negatives: str = "local"       # or "block", "global"
    block_size: int | None = None  # for negatives="block"
    consistency: str = "infonce"   # or "mse": the ablation without negatives
    layer: str = "layer4"
    cam: str = "auto"              # closed form where the head allows it
    amp_dtype: torch.dtype | None = None

    def __post_init__(self):  # the one place each objective option is checked (the jobs map field -> --flag)
        _one_of("recipe", self.recipe, RECIPES)
        _one_of("arrangement", self.arrangement, ARRANGEMENTS)
        _one_of("negatives", self.negatives, NEGATIVES)
        _one_of("cam", self.cam, CAM_METHODS)
        _one_of("consistency", self.consistency, CONSISTENCY)
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise OptionError("tau", "> 0", self.tau, "the temperature")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise OptionError("lam", ">= 0", self.lam, "the weight of the CGC loss")
        if self.block_size is not None and self.block_size < 2:
            raise OptionError("block_size", ">= 2", self.block_size)
        if self.negatives == "block" and self.block_size is None:
            raise OptionError("block_size", "given (>= 2) with negatives='block'", self.block_size)


class OptionError(ValueError):
    """A CGCConfig field outside its allowed values: `field` (its name),
    `allowed` (the rule in words), `value`; `what` says what the field is."""

    def __init__(self, field: str, allowed: str, value, what: str = ""):
        self.field, self.allowed, self.value = field, allowed, value
        super().__init__(f"{field}{f' ({what})' if what else ''} must be {allowed}, got {value!r}")


def _one_of(name, value, allowed):
    if value not in allowed:
        raise OptionError(name, f"one of {allowed}", value)


def cgc_objective(model: nn.Module, batch: dict[str, torch.Tensor], config: CGCConfig | None = None,
                  **options) -> CGCOutput:
    """Loss of one training step: CE + lam * L_CGC (Pillai et al., CVPR 2022,
    Sec. 3: InfoNCE between the Grad-CAM of T(x) and T applied to the Grad-CAM
    of x, the other images of the batch as negatives).

    model: a classifier returning logits (N, classes), or a CamNet, possibly
    wrapped in DDP or torch.compile. batch: float (B, 3, H, W) views named by
    the recipe (see the module docstring), "label" int64 (B,) (UNLABELED = -100
    rows only feed L_CGC), "crop" int64 (B, 4) = (top, left, height, width)
    in query pixels and "flip" bool (B,) of T. config: a CGCConfig (lam,
    tau dimensionless), or its fields as keyword options (lam=1.0, ...). Returns a CGCOutput of fp32 scalars
    (loss differentiable). Raises ValueError for a bad option or batch
    (missing keys, shapes, dtypes, crop boxes outside the query, too few
    images for negatives), naming the key or option.
    """
    cfg = dataclasses.replace(config, **options) if config is not None else CGCConfig(**options)
    check_batch(batch, cfg)
    with _as_camnet(model, cfg.layer) as net:
        return _run(net, batch, cfg)


def _run(net: nn.Module, batch: dict, cfg: CGCConfig) -> CGCOutput:
    label = batch["label"]
    views = [batch[k] for k in VIEWS[cfg.recipe]]
    with torch.autocast(views[0].device.type, dtype=cfg.amp_dtype, enabled=cfg.amp_dtype is not None):
        outs = net(*views) if len(views) > 1 else [net(views[0])]
    logits_xe = outs[0][0]
    with _fp32_region(views[0]):
        ce = sum(_ce(logits, label) for logits, _ in outs)
        if cfg.recipe == "baseline":
            return CGCOutput(ce, ce, torch.zeros((), device=ce.device), logits_xe)
        query = batch["image" if cfg.recipe == "official" else "xe"]
        cgc = heatmap_consistency(net, outs[-2], outs[-1], batch["crop"], batch["flip"],
                                  tuple(query.shape[-2:]), cfg)
    return CGCOutput(ce + cfg.lam * cgc, ce, cgc, logits_xe)


def heatmap_consistency(net: nn.Module, query_out, aug_out, crop, flip, size, cfg: CGCConfig) -> torch.Tensor:
    """L_CGC from the (logits, features) of the query and of its augmented view.

    Grad-CAM (Selvaraju et al., ICCV 2017) of the class predicted on the query,
    for both; each map upsampled to `size` = (H, W) of the query and
    sum-normalised (+1e-8, the authors' post-processing); the query's map
    moved by T (crop int64 (B, 4) top/left/height/width, flip bool (B,)) is
    the positive of the augmented view's map, the batch's other maps its
    negatives (cfg: arrangement, negatives, tau; or MSE without negatives).
    query_out, aug_out: (logits (B, classes), features (B, K, h, w)) as a
    CamNet returns them. Returns a float32 scalar, differentiable through
    both maps (double backward for the autograd Grad-CAM).
    """
    with _fp32_region(query_out[0]):
        target = query_out[0].detach().argmax(1)
        cam = _cam_fn(net, cfg.cam)
        orig = normalize_heatmap(cam(*query_out, target), size)
        aug = normalize_heatmap(cam(*aug_out, target), size)
        return _consistency(aug, crop_resize_flip(orig, crop, flip), cfg)


UNLABELED = -100  # cross-entropy's ignore_index: an image without a label (semi-supervised runs)


def _fp32_region(x: torch.Tensor):
    """No autocast: heatmaps, their normalisation and the losses stay in fp32."""
    return torch.autocast(x.device.type, enabled=False)


def _ce(logits, label):
    """Mean cross-entropy over the labeled rows; rows labeled UNLABELED (-100)
    only feed the CGC term, and a batch without labels gives 0, not NaN."""
    total = F.cross_entropy(fp32(logits), label, ignore_index=UNLABELED, reduction="sum")
    return total / (label != UNLABELED).sum().clamp(min=1)


def _cam_fn(net: nn.Module, method: str):
    camnet = unwrap(net)
    fc = camnet.linear_head()
    if method == "closed_form" and fc is None:
        raise ValueError("cam='closed_form' needs layer4 followed by global average pooling "
                         "and a linear fc (a torchvision ResNet); use cam='autograd'")
    if method == "autograd" or fc is None:
        return functools.partial(gradcam_autograd, per_image=camnet.batch_coupled)
    return lambda logits, feats, target: gradcam_closed_form(feats, fc.weight, target)


def _consistency(aug, moved, cfg: CGCConfig):
    if cfg.consistency == "mse":
        return mse_consistency(aug, moved)
    return info_nce(aug, moved, cfg.tau, cfg.arrangement, cfg.negatives, cfg.block_size)


@contextlib.contextmanager
def _as_camnet(model: nn.Module, layer: str):
    """`model` itself if it already is a (wrapped) CamNet, else a temporary one.
    (No try/except around the yield: errors inside keep their type.)"""
    if find_camnet(model) is not None:
        yield model
        return
    net = CamNet(model, layer)
    try:
        yield net
    finally:
        net.remove()


def check_batch(batch: dict[str, torch.Tensor], cfg: CGCConfig) -> None:
    """Shapes, dtypes and crop boxes, before any compute. Crop values are
    checked where they are CPU tensors (on a GPU that would cost a sync)."""
    keys = [*VIEWS[cfg.recipe], "label"] + (["crop", "flip"] if cfg.recipe != "baseline" else [])
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"recipe {cfg.recipe!r} needs batch keys {keys}; missing {missing}")
    b = batch["label"].shape[0]
    for k in VIEWS[cfg.recipe]:
        x = batch[k]
        if x.dim() != 4 or x.shape[0] != b or not x.is_floating_point():
            raise ValueError(f"batch[{k!r}] must be float (B={b}, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if batch["label"].dim() != 1 or batch["label"].dtype != torch.int64:
        raise ValueError(f"batch['label'] must be int64 (B,), got {batch['label'].dtype} {tuple(batch['label'].shape)}")
    if cfg.recipe == "baseline":
        return
    query = batch["image" if cfg.recipe == "official" else "xe"]
    if batch["aug"].shape != query.shape:
        raise ValueError(f"batch['aug'] {tuple(batch['aug'].shape)} must have the query's shape {tuple(query.shape)}")
    crop, flip = batch["crop"], batch["flip"]
    if crop.shape != (b, 4) or crop.is_floating_point():
        raise ValueError(f"batch['crop'] must be integer (B={b}, 4) (top, left, height, width), got {crop.dtype} {tuple(crop.shape)}")
    if flip.shape != (b,) or flip.dtype != torch.bool:
        raise ValueError(f"batch['flip'] must be bool (B={b},), got {flip.dtype} {tuple(flip.shape)}")
    _check_negatives(b, cfg)
    if crop.device.type == "cpu":
        check_crops(crop, *query.shape[-2:], name="batch['crop']")


def _check_negatives(b: int, cfg: CGCConfig) -> None:
    if cfg.consistency == "mse":
        return
    if b < 2:
        raise ValueError(f"a batch of {b} image has no negatives for the contrastive loss; use B >= 2")
    if cfg.negatives == "block" and b % cfg.block_size:
        raise ValueError(f"block_size {cfg.block_size} must divide the batch size {b}")
