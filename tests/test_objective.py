"""The whole objective: the authors' step as oracle, gradcheck, equivariance, bad input."""

import copy

import pytest
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

from authors_cgc import authors_step
from cgc_ray.objective import cgc_objective
from cgc_ray.transforms import sample_crop_flip


def make_batch(b, size, classes, seed=0, query="image", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    crops, flips = zip(*(sample_crop_flip(size, size, rng) for _ in range(b)))
    crop, flip = torch.tensor(crops), torch.tensor(flips)
    batch = {k: torch.randn(b, 3, size, size, generator=g, dtype=dtype) for k in ("xe", "image")}
    # The augmented view made independently, with torchvision, from the query.
    batch["aug"] = torch.stack([
        (TF.hflip if flip[i] else (lambda x: x))(
            TF.resized_crop(batch[query][i], *crop[i].tolist(), [size, size], antialias=True))
        for i in range(b)])
    batch.update(crop=crop, flip=flip, label=torch.randint(classes, (b,), generator=g))
    return batch


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_close(got: dict, ref: dict, rel: float):
    """Every parameter's gradient within `rel` of the reference, relative to its largest entry."""
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        err = (got[name] - r).abs().max() / r.abs().max().clamp_min(1e-12)
        assert err < rel, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("arch,size", [("resnet18", 224), ("resnet50", 96)])
def test_official_recipe_equals_the_authors_step(arch, size):
    torch.manual_seed(0)
    ours = getattr(torchvision.models, arch)(num_classes=10).train()
    theirs = copy.deepcopy(ours)
    batch = make_batch(4, size, 10)

    out = cgc_objective(ours, batch, lam=0.5, tau=0.5, recipe="official")
    out.loss.backward()
    total, xe, sim = authors_step(theirs, batch, lam=0.5, tau=0.5)
    total.backward()

    for got, ref in ((out.loss, total), (out.ce, xe), (out.cgc, sim)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert_grads_close(_grads(ours), _grads(theirs), rel=1e-4)
    # BatchNorm saw each view on its own: running stats moved identically.
    torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean)


def test_closed_form_and_autograd_objectives_agree():
    torch.manual_seed(1)
    m1 = torchvision.models.resnet18(num_classes=6).train()
    m2 = copy.deepcopy(m1)
    batch = make_batch(6, 64, 6, seed=3)
    o1 = cgc_objective(m1, batch, lam=1.0, cam="closed_form")
    o2 = cgc_objective(m2, batch, lam=1.0, cam="autograd")
    torch.testing.assert_close(o1.loss, o2.loss, rtol=1e-6, atol=0)
    o1.loss.backward()
    o2.loss.backward()
    assert_grads_close(_grads(m1), _grads(m2), rel=1e-4)


class TinyNet(nn.Module):
    """Conv - BN - ReLU - conv ("layer4") - GAP - linear: every path of the objective, small."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
        self.layer4 = nn.Conv2d(4, 5, 3, padding=1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.layer4(self.stem(x))).flatten(1))


def _set_tensor(module, name, value):
    """Replace a parameter by a plain tensor, so gradcheck can differentiate w.r.t. it."""
    owner, leaf = module.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
    owner._parameters.pop(leaf, None)
    setattr(owner, leaf, value)


@pytest.mark.parametrize("recipe,cam", [("official", "closed_form"), ("official", "autograd"),
                                        ("two_view", "autograd")])
def test_gradcheck_whole_objective_float64(recipe, cam):
    torch.manual_seed(2)
    net = TinyNet().double().train()
    query = "image" if recipe == "official" else "xe"
    batch = make_batch(3, 8, 3, seed=4, query=query, dtype=torch.float64)
    names = ["stem.0.weight", "layer4.weight", "fc.weight"]
    params = [net.get_parameter(n).detach().clone().requires_grad_() for n in names]

    def loss(*args):
        *ps, aug = args
        for name, p in zip(names, ps):
            _set_tensor(net, name, p)
        return cgc_objective(net, {**batch, "aug": aug}, lam=1.0, tau=0.5, recipe=recipe, cam=cam).loss

    assert torch.autograd.gradcheck(loss, (*params, batch["aug"].clone().requires_grad_()),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


class Equivariant(nn.Module):
    """A 1x1 conv at full resolution + GAP + linear: its Grad-CAM is a positive
    linear function of each pixel, so it commutes with crop, resize and flip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.uniform_(0.1, 1.0)
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0, 0.5, 1.0], [0.1, 0.2, 0.1, 0.1]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.avgpool(self.conv(x)).flatten(1))


def test_transformed_heatmap_of_original_equals_heatmap_of_transformed_image():
    from cgc_ray.contrastive import _flat_unit  # noqa: PLC0415 (the quantity the loss compares)
    from cgc_ray.gradcam import CamNet, gradcam_autograd, normalize_heatmap
    from cgc_ray.transforms import crop_resize_flip

    net = CamNet(Equivariant(), "conv").double()
    batch = make_batch(5, 32, 2, seed=7, dtype=torch.float64)
    batch["image"] = batch["image"].abs() + 0.1
    batch["aug"] = torch.stack([
        (TF.hflip if batch["flip"][i] else (lambda x: x))(
            TF.resized_crop(batch["image"][i], *batch["crop"][i].tolist(), [32, 32], antialias=True))
        for i in range(5)])
    target = torch.zeros(5, dtype=torch.long)
    maps = [normalize_heatmap(gradcam_autograd(*net(batch[k]), target), (32, 32)) for k in ("image", "aug")]
    moved = crop_resize_flip(maps[0], batch["crop"], batch["flip"])
    cos = (_flat_unit(moved) * _flat_unit(maps[1])).sum(1)
    torch.testing.assert_close(cos, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-9)
    # and without the transform the maps do differ
    assert ((_flat_unit(maps[0]) * _flat_unit(maps[1])).sum(1) < 0.999).any()


def test_baseline_is_plain_cross_entropy():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=4).train()
    batch = make_batch(4, 64, 4)
    ref = F.cross_entropy(copy.deepcopy(model)(batch["xe"]), batch["label"])
    out = cgc_objective(model, {"xe": batch["xe"], "label": batch["label"]}, recipe="baseline")
    torch.testing.assert_close(out.loss, ref)
    assert out.cgc.item() == 0


def test_two_view_uses_the_training_view_as_query():
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=4).train()
    batch = make_batch(4, 64, 4, query="xe")
    twin = copy.deepcopy(model)
    out = cgc_objective(model, batch, lam=1.0, recipe="two_view")
    # The authors' step on (query=xe, aug) minus its third CE term is the two-view loss.
    _, xe3, sim = authors_step(twin, {**batch, "image": batch["xe"]}, lam=1.0, tau=0.5)
    ce_xe = F.cross_entropy(copy.deepcopy(model)(batch["xe"]), batch["label"])
    torch.testing.assert_close(out.cgc, sim, rtol=1e-5, atol=0)
    assert out.ce.item() == pytest.approx(xe3.item() - ce_xe.item(), rel=1e-4)


def test_bf16_autocast_keeps_maps_and_loss_in_fp32():
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=4).train()
    batch = make_batch(4, 64, 4)
    out = cgc_objective(model, batch, lam=1.0, amp_dtype=torch.bfloat16)
    ref = cgc_objective(copy.deepcopy(model), batch, lam=1.0)
    assert out.cgc.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    assert out.cgc.item() == pytest.approx(ref.cgc.item(), rel=0.05)


@pytest.mark.parametrize("change,message", [
    (dict(tau=0.0), "tau .* must be > 0"),
    (dict(tau=-1.0), "tau .* must be > 0"),
    (dict(lam=-0.1), "lam .* must be >= 0"),
    (dict(recipe="three_view"), "recipe must be one of"),
    (dict(negatives="block", block_size=3), "block_size 3 must divide the batch size 4"),
    (dict(arrangement="sideways"), "arrangement must be one of"),
])
def test_bad_options_are_named(change, message):
    model = torchvision.models.resnet18(num_classes=4)
    with pytest.raises(ValueError, match=message):
        cgc_objective(model, make_batch(4, 32, 4), **change)


@pytest.mark.parametrize("edit,message", [
    (lambda b: b.pop("aug"), r"missing \['aug'\]"),
    (lambda b: b.update(aug=b["aug"][:, :, :16]), r"batch\['aug'\] .* must have the query's shape"),
    (lambda b: b.update(crop=torch.tensor([[0, 0, 32, 32]] * 3 + [[20, 20, 20, 5]])), r"crop'\]\[3\]"),
    (lambda b: b.update(crop=b["crop"].float()), r"batch\['crop'\] must be integer"),
    (lambda b: b.update(flip=b["flip"].long()), r"batch\['flip'\] must be bool"),
    (lambda b: b.update(label=b["label"][:2]), r"batch\['xe'\] must be float \(B=2"),
])
def test_bad_batches_are_named(edit, message):
    batch = make_batch(4, 32, 4)
    edit(batch)
    with pytest.raises(ValueError, match=message):
        cgc_objective(torchvision.models.resnet18(num_classes=4), batch)


def test_a_batch_of_one_has_no_negatives():
    with pytest.raises(ValueError, match="no negatives"):
        cgc_objective(torchvision.models.resnet18(num_classes=4), make_batch(1, 32, 4))


def test_unlabeled_rows_feed_only_the_cgc_term():
    """Semi-supervised batches: -100 rows leave cross-entropy (the mean over the
    labeled rows, as F.cross_entropy on those rows alone, summed over the three
    views); none labeled gives 0."""
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=4).train()
    batch = make_batch(6, 64, 4)
    batch["label"][[1, 4]] = -100
    out = cgc_objective(model, batch, lam=1.0)
    kept = batch["label"] != -100
    ref_model = copy.deepcopy(model)
    ref = sum(F.cross_entropy(ref_model(batch[k])[kept], batch["label"][kept]) for k in ("xe", "image", "aug"))
    torch.testing.assert_close(out.ce, ref, rtol=1e-5, atol=1e-6)
    batch["label"][:] = -100
    out = cgc_objective(model, batch, lam=1.0)
    assert out.ce.item() == 0 and torch.isfinite(out.loss) and out.loss.item() == pytest.approx(out.cgc.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
