"""Insertion AUC (RISE) against independent oracles: scipy's filters, captum's
Grad-CAM, and a toy model whose insertion curve is an explicit function of the
pixels; the batched path against the one-image one."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam
from scipy.ndimage import convolve, gaussian_filter
from torch import nn

from cgc_ray.evaluation import auc, blur, insertion_auc, insertion_auc_single, insertion_maps, insertion_order, rise_kernel

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


# ---------------------------------------------------------------- insertion AUC

@pytest.mark.parametrize("klen, sigma", [(11, 5.0), (7, 1.5), (5, 3.0), (3, 10.0)])
def test_rise_kernel_is_scipy_gaussian_filter_of_a_delta(klen, sigma):
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    expected = gaussian_filter(delta, sigma).astype(np.float32)  # RISE's gkern
    np.testing.assert_allclose(rise_kernel(klen, sigma).numpy(), expected, rtol=0, atol=1e-7)


def test_blur_is_a_zero_padded_convolution_per_channel():
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    expected = np.stack([[convolve(x[b, c].double().numpy(), k, mode="constant", cval=0.0)
                          for c in range(3)] for b in range(2)])
    np.testing.assert_allclose(blur(x).numpy(), expected, rtol=0, atol=1e-5)


def test_auc_formula_on_hand_scores():
    assert float(auc(torch.tensor([0.0, 0.5, 1.0]))) == pytest.approx(0.5)
    assert float(auc(torch.tensor([1.0, 1.0, 1.0, 1.0]))) == pytest.approx(1.0)
    # (0.2 + 0.4 + 0.9 + 0.3 - 0.1 - 0.15) / 3
    assert float(auc(torch.tensor([0.2, 0.4, 0.9, 0.3]))) == pytest.approx(1.55 / 3)


def test_ties_go_in_flat_index_order():
    heat = torch.tensor([[0.0, 1, 0], [2, 1, 0], [1, 2, 0]])
    assert insertion_order(heat[None])[0].tolist() == [3, 7, 1, 4, 6, 0, 2, 5, 8]


class LinearLogit(nn.Module):
    """logits = [0, sum(x * w)]: p(class 1) = sigmoid(sum(x * w)) of the canvas."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([torch.zeros_like(s), s], 1)


def insertion_oracle(x, w, heat, step):
    """Numpy insertion curve of LinearLogit: scipy blur, explicit canvases."""
    x, w = x.double().numpy(), w.double().numpy()
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    canvas = np.stack([convolve(c, k, mode="constant") for c in x])
    order = np.argsort(-heat.numpy().ravel(), kind="stable")  # distinct values
    sig = lambda s: 1 / (1 + np.exp(-s))
    cls = int((x * w).sum() > 0)
    scores = []
    for i in range(int(np.ceil(x[0].size / step)) + 1):
        p1 = sig((canvas * w).sum())
        scores.append(p1 if cls == 1 else 1 - p1)
        idx = np.unravel_index(order[i * step:(i + 1) * step], x.shape[1:])
        canvas[(slice(None),) + idx] = x[(slice(None),) + idx]
    return np.array(scores), cls


@pytest.mark.parametrize("size, step, n", [(16, 32, 9), (16, 48, 7), (224, 224 * 8, 29)])
def test_insertion_curve_of_a_toy_model(size, step, n):
    g = torch.Generator().manual_seed(size + step)
    x = torch.randn(2, 3, size, size, generator=g)
    w = torch.randn(3, size, size, generator=g) * 4 / size
    heat = torch.randperm(2 * size * size, generator=g).view(2, size, size).float()
    model = LinearLogit(w)
    res = insertion_auc(model, x, [1, 0], heatmaps=heat, step=step, max_batch=5)
    assert res.curves.shape == (2, n)
    for b in range(2):
        expected, cls = insertion_oracle(x[b], w, heat[b], step)
        assert int(res.pred[b]) == cls
        np.testing.assert_allclose(res.curves[b].numpy(), expected, rtol=0, atol=2e-5)
        expected_auc = (expected.sum() - expected[0] / 2 - expected[-1] / 2) / (n - 1)
        assert float(res.auc[b]) == pytest.approx(expected_auc, abs=2e-5)
        got_auc, got_curve = insertion_auc_single(model, x[b], 1, heatmap=heat[b], step=step)
        np.testing.assert_allclose(got_curve.numpy(), expected, rtol=0, atol=2e-5)
        assert got_auc == pytest.approx(expected_auc, abs=2e-5)
    assert res.mean == pytest.approx(float(res.auc.mean()))


def test_batched_insertion_equals_single(resnet):
    g = torch.Generator().manual_seed(1)
    x, labels = torch.randn(3, 3, 64, 64, generator=g), torch.tensor([0, 3, 4])
    res = insertion_auc(resnet, x, labels, step=64 * 4, batch_size=2, max_batch=7)
    assert res.curves.shape == (3, 17)
    # The maps of the batched run (chunks of 2 images) agree with one-image maps to
    # float noise; the reference loop gets the very same maps, since such noise can
    # reorder near-equal heatmap values.
    maps = torch.cat([insertion_maps(resnet, x[:2], labels[:2]), insertion_maps(resnet, x[2:], labels[2:])])
    for b in range(3):
        # fp32 reductions over layer4's 3x3x512 inputs (K ~ 4.6k terms), batched and single runs picking
        # different kernels: errors up to ~sqrt(K) * 1.2e-7 ~ 1e-5 of the map's scale, on any CPU
        scale = float(maps[b].abs().max())
        torch.testing.assert_close(insertion_maps(resnet, x[b:b + 1], labels[b:b + 1])[0], maps[b],
                                   rtol=1e-4, atol=1e-5 * scale)
        got_auc, curve = insertion_auc_single(resnet, x[b], int(labels[b]), heatmap=maps[b], step=64 * 4)
        torch.testing.assert_close(res.curves[b], curve, rtol=0, atol=1e-5)
        assert float(res.auc[b]) == pytest.approx(got_auc, abs=1e-5)


def captum_maps(model, x, labels):
    cam = LayerGradCam(model, model.layer4).attribute(x, target=labels, relu_attributions=True)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


def test_maps_in_eval_and_bn_train_mode(resnet):
    g = torch.Generator().manual_seed(2)
    x, labels = torch.randn(4, 3, 64, 64, generator=g), torch.tensor([1, 2, 3, 4])
    before = copy.deepcopy(resnet.state_dict())
    maps = insertion_maps(resnet, x, labels)
    torch.testing.assert_close(maps, captum_maps(resnet, x, labels), rtol=1e-4, atol=1e-7)

    bn_maps = insertion_maps(resnet, x, labels, bn_train_mode=True)
    expected = captum_maps(copy.deepcopy(resnet).train(), x, labels)  # batch statistics
    torch.testing.assert_close(bn_maps, expected, rtol=1e-4, atol=1e-7)
    assert (bn_maps - maps).abs().max() > 1e-3
    assert not any(m.training for m in resnet.modules())  # modes restored
    for k, v in resnet.state_dict().items():  # running statistics restored
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
