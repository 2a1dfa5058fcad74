"""The optimiser and its learning-rate schedule.

SGD over two parameter groups when the run gives the new head its own rate
(the semi-supervised recipe: a head trained from scratch on a pretrained
trunk), and one schedule stepped after every optimiser step:

    lr(step) = base_lr · gamma^(milestones passed by the step's epoch) · warm-up

The warm-up ramps linearly from base_lr / (warm-up steps) to base_lr over the
first `warmup_epochs` (Goyal et al. 2017, for large global batches). Without
warm-up, this equals torch's MultiStepLR stepped once per epoch.
"""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

from .config import TrainConfig
from .model import head_name


def milestones(cfg: TrainConfig) -> list[int]:
    """--lr-milestones, else every --lr-step-epochs epochs."""
    if cfg.lr_milestones:
        return [int(x) for x in str(cfg.lr_milestones).split(",") if x.strip()]
    return list(range(cfg.lr_step_epochs, cfg.epochs, cfg.lr_step_epochs))


def lr_factor(step: int, steps_per_epoch: int, marks: list[int], gamma: float, warmup_epochs: float) -> float:
    """The multiplier of the base learning rate for optimiser step `step` (0-based)."""
    factor = gamma ** bisect_right(marks, step // steps_per_epoch)
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def scale_lr(cfg: TrainConfig, lr: float) -> float:
    """A learning rate given at the reference batch, at this run's global batch."""
    return lr * cfg.batch_size / cfg.lr_reference_batch


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    groups = [{"params": list(model.parameters()), "lr": scale_lr(cfg, cfg.lr)}]
    if cfg.head_lr is not None:
        head = {id(p) for p in model.get_submodule(head_name(model)).parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": scale_lr(cfg, cfg.lr)},
                  {"params": [p for p in model.parameters() if id(p) in head], "lr": scale_lr(cfg, cfg.head_lr)}]
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped after every optimiser step (its state, the step count, is checkpointed)."""
    marks = milestones(cfg)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, steps_per_epoch, marks, cfg.lr_gamma, cfg.warmup_epochs))
