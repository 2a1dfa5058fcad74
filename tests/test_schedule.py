"""The optimiser and learning-rate schedule against torch's own schedulers and
hand-computed values, and the options' checks."""

import pytest
import torch
import torchvision

from cgc_ray.train.config import ConfigError, TrainConfig, check
from cgc_ray.train.schedule import build_optimizer, build_scheduler


def _lrs(cfg, steps_per_epoch, model=None):
    """The lr of every group at every step of the run."""
    opt = build_optimizer(model or torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def _torch_per_epoch(cfg, steps_per_epoch, make):
    """torch's scheduler stepped once per epoch, repeated for the epoch's steps."""
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.lr * cfg.batch_size / cfg.lr_reference_batch)
    sched, out = make(opt), []
    for _ in range(cfg.epochs):
        out += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        sched.step()
    return out


def test_milestones_equal_torch_multisteplr():
    cfg = TrainConfig(epochs=20, lr=0.02, batch_size=128, lr_reference_batch=128, lr_milestones="12,16", lr_gamma=0.2)
    ref = _torch_per_epoch(cfg, 3, lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [12, 16], gamma=0.2))
    assert [g[0] for g in _lrs(cfg, 3)] == pytest.approx(ref)


def test_default_steps_equal_torch_steplr():
    cfg = TrainConfig(epochs=9, lr_step_epochs=3, batch_size=512)  # lr 0.1 x 512/256
    ref = _torch_per_epoch(cfg, 2, lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.1))
    assert [g[0] for g in _lrs(cfg, 2)] == pytest.approx(ref)
    assert ref[0] == pytest.approx(0.2) and ref[-1] == pytest.approx(0.002)


def test_linear_warmup_by_hand():
    cfg = TrainConfig(epochs=4, lr=0.1, batch_size=256, warmup_epochs=1, lr_step_epochs=3)
    got = [g[0] for g in _lrs(cfg, 4)]
    assert got == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
                                 0.01, 0.01, 0.01, 0.01])


def test_the_new_head_gets_its_own_rate():
    model = torchvision.models.resnet18(num_classes=5)
    cfg = TrainConfig(epochs=2, lr=0.02, head_lr=5.0, batch_size=64, lr_reference_batch=128, weight_decay=0)
    opt = build_optimizer(model, cfg)
    trunk, head = opt.param_groups
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(trunk["params"]) + 2 == len(list(model.parameters()))
    assert (trunk["lr"], head["lr"]) == pytest.approx((0.01, 2.5))  # both scaled by 64/128
    assert _lrs(cfg, 1, model)[0] == pytest.approx([0.01, 2.5])


@pytest.mark.parametrize("change,message", [
    (dict(lr_milestones="16,12"), "--lr-milestones must increase"),
    (dict(lr_milestones="12;16"), "--lr-milestones must be epochs like 12,16"),
    (dict(head_lr=0.0), "--head-lr must be > 0"),
    (dict(warmup_epochs=90.0), r"--warmup-epochs must be in \[0, --epochs\)"),
])
def test_bad_schedules_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        check(TrainConfig(**change))


def test_autoscaling_skips_the_gpu_count():
    cfg = TrainConfig(use_gpu=True, num_workers=4, batch_size=64)
    with pytest.raises(ConfigError, match="pass --autoscaling"):
        check(cfg, cluster_gpus=0.0)
    check(TrainConfig(use_gpu=True, num_workers=4, batch_size=64, autoscaling=True), cluster_gpus=0.0)
