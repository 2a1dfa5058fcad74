"""Grad-CAM against captum's LayerGradCam, and the closed form against autograd."""

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam

from cgc_ray.gradcam import CamNet, gradcam_autograd, gradcam_closed_form, normalize_heatmap


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    return model, torch.randn(3, 3, 96, 96), torch.tensor([0, 3, 6])


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_autograd_gradcam_equals_captum(resnet, layer):
    model, x, target = resnet
    expected = LayerGradCam(model, model.get_submodule(layer)).attribute(
        x, target=target, relu_attributions=True)[:, 0]
    net = CamNet(model, layer)
    logits, feats = net(x)
    got = gradcam_autograd(logits, feats, target)
    net.remove()
    assert got.shape == expected.shape
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_closed_form_equals_captum_at_layer4(resnet):
    model, x, target = resnet
    expected = LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)[:, 0]
    net = CamNet(model)
    _, feats = net(x)
    net.remove()
    torch.testing.assert_close(gradcam_closed_form(feats, model.fc.weight, target), expected,
                               rtol=1e-4, atol=1e-7)


def test_closed_form_and_double_backward_have_the_same_gradients():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=5).train()
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([1, 0, 4, 2])
    probe = torch.randn(4, 2, 2)  # a loss that weighs every map position differently
    grads = []
    net = CamNet(model)
    for method in ("autograd", "closed_form"):
        model.zero_grad()
        logits, feats = net(x)
        cam = (gradcam_autograd(logits, feats, target) if method == "autograd"
               else gradcam_closed_form(feats, model.fc.weight, target))
        (cam * probe).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "fc.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_camnet_names_a_missing_layer():
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        CamNet(torchvision.models.resnet18(), "layer9")


def test_normalize_heatmap_protocol():
    cam = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize_heatmap(cam, (4, 4))
    # Hand value: the bilinear upsample of a 2x2 map to 4x4 (align_corners=False)
    # has top-left corner equal to the source corner, and the sum of the 4x4 map is
    # 4 * (sum of the 2x2 map) for this symmetric stencil: 16.
    assert out[0, 0, 0] == pytest.approx(1.0 / 16 + 1e-8, rel=1e-6)
    assert out[0].sum() == pytest.approx(1.0 + 16e-8, rel=1e-6)
    # An all-zero map becomes uniform, not NaN.
    torch.testing.assert_close(out[1], torch.full((4, 4), 1e-8))


def test_an_error_inside_the_objective_keeps_its_type_and_message():
    """A CamNet (as in training, under DDP) whose model raises: the objective
    passes the error on as it was, instead of a generator's RuntimeError."""
    from cgc_ray.objective import cgc_objective

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torchvision.models.resnet18(num_classes=4)
            self.layer4, self.fc, self.avgpool = self.inner.layer4, self.inner.fc, self.inner.avgpool

        def forward(self, x):
            raise AttributeError("'Broken' has no attribute 'aux_logits' (raised inside the forward)")

    net = CamNet(Broken(), "layer4")
    b = 2
    batch = {k: torch.randn(b, 3, 32, 32) for k in ("xe", "image", "aug")}
    batch.update(crop=torch.tensor([[0, 0, 16, 16]] * b), flip=torch.zeros(b, dtype=torch.bool),
                 label=torch.zeros(b, dtype=torch.int64))
    with pytest.raises(AttributeError, match="has no attribute 'aux_logits' \\(raised inside the forward\\)"):
        cgc_objective(net, batch)


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4.1.bn2"), ("vgg11", "features.18")])
def test_a_layer_whose_output_is_changed_in_place_is_refused(arch, layer):
    """Its hooked tensor is overwritten later (`out += identity`, ReLU(inplace=True)):
    the map would be another layer's. A hook that keeps a clone shows the difference."""
    from cgc_ray.gradcam import InPlaceLayer
    from cgc_ray.train.config import ConfigError, check, parse

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=5).eval()
    kept = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, out: kept.append((out, out.clone())))
    model(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert not torch.allclose(*kept[0])  # what the plain hook would have explained is not the layer's output
    with pytest.raises(InPlaceLayer, match=f"layer '{layer}': its output is changed in place"):
        CamNet(model, layer)(torch.randn(2, 3, 64, 64))
    with pytest.raises(ConfigError, match=f"--layer {layer} of {arch}: its output is changed in place"):
        check(parse(["--arch", arch, "--layer", layer]))


def _own_gradient_gradcam(model, layer, x, target):
    """Reference: image i's map from d logit_i[target_i] / d A_i alone, one
    backward pass per image (the definition, with no batching tricks)."""
    kept = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, out: kept.append(out))
    logits = model(x)
    handle.remove()
    feats = kept[0]
    maps = []
    for i in range(x.shape[0]):
        grad, = torch.autograd.grad(logits[i, target[i]], feats, retain_graph=True)
        weights = grad[i].mean(dim=(1, 2), keepdim=True)
        maps.append(torch.relu((weights * feats[i]).sum(0)))
    return torch.stack(maps).detach()


@pytest.mark.parametrize("layer", ["layer3", "layer2"])
def test_train_mode_gradcam_of_one_image_ignores_the_others_targets(layer):
    """Issue 14.4: with batch-statistics BatchNorm after the layer, the summed
    gradient mixes images; each map must be the image's own gradient."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.randn(4, 3, 64, 64)
    maps = {}
    for name, target in {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([0, 1, 2, 9])}.items():
        net = CamNet(model, layer)
        logits, feats = net(x)
        assert net.batch_coupled
        maps[name] = gradcam_autograd(logits, feats, target, per_image=net.batch_coupled).detach()
        net.remove()
        expected = _own_gradient_gradcam(model, layer, x, target)
        assert expected.abs().max() > 0
        torch.testing.assert_close(maps[name], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    torch.testing.assert_close(maps["a"][:3], maps["b"][:3], rtol=0, atol=1e-6 * maps["a"].abs().max().item())
    assert not torch.allclose(maps["a"][3], maps["b"][3])


def test_summed_gradient_would_mix_images_in_train_mode():
    """The case the per-image path exists for: the summed gradient at layer3
    moves image 0's map when only image 3's target changes."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.randn(4, 3, 64, 64)
    net = CamNet(model, "layer3")
    maps = []
    for target in (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 9])):
        logits, feats = net(x)
        maps.append(gradcam_autograd(logits, feats, target).detach())
    net.remove()
    assert (maps[0][0] - maps[1][0]).abs().max() > 0.01 * maps[0][0].abs().max()


@pytest.mark.parametrize("layer,train,coupled", [("layer4", True, False), ("layer3", True, True),
                                                  ("layer3", False, False)])
def test_batch_coupling_is_detected_where_batch_statistics_follow_the_layer(layer, train, coupled):
    model = torchvision.models.resnet18(num_classes=10).train(train)
    net = CamNet(model, layer)
    net(torch.randn(2, 3, 64, 64))
    net.remove()
    assert net.batch_coupled is coupled


def test_per_image_gradcam_equals_captum_where_images_are_independent(resnet):
    model, x, target = resnet  # eval mode: running statistics, no coupling
    expected = LayerGradCam(model, model.layer3).attribute(x, target=target, relu_attributions=True)[:, 0]
    net = CamNet(model, "layer3")
    logits, feats = net(x)
    net.remove()
    torch.testing.assert_close(gradcam_autograd(logits, feats, target, per_image=True), expected,
                               rtol=1e-4, atol=1e-7)


def test_per_image_gradcam_in_chunks_equals_one_pass(monkeypatch):
    import cgc_ray.gradcam as gradcam
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x, target = torch.randn(5, 3, 64, 64), torch.tensor([1, 2, 3, 4, 5])
    net = CamNet(model, "layer3")
    logits, feats = net(x)
    net.remove()
    whole = gradcam_autograd(logits, feats, target, per_image=True)
    monkeypatch.setattr(gradcam, "PER_IMAGE_ELEMENTS", 2 * feats.numel())  # chunks of 2, 2, 1 images
    torch.testing.assert_close(gradcam_autograd(logits, feats, target, per_image=True), whole, rtol=1e-5, atol=1e-9)
