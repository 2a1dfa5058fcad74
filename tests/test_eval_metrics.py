"""Content Heatmap and insertion AUC against independent oracles: hand-computed
box areas, scipy's filters, captum's Grad-CAM, a numpy bilinear upsampling, and
a toy model whose insertion curve is an explicit function of the pixels."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from captum.attr import LayerGradCam
from scipy.ndimage import convolve, gaussian_filter
from torch import nn

from cgc_ray.evaluation import (
    auc, blur, content_heatmap, content_heatmap_single, insertion_auc, insertion_auc_single,
    insertion_maps, insertion_order, rise_kernel,
)

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class ConstantFeatures(nn.Module):
    """layer4 outputs ones everywhere, so Grad-CAM is ReLU(sum W[c]) / (h*w):
    uniform (row > 0) or all zero (row == 0). `body` aliases layer4 for the
    autograd path (CamNet uses the closed form only at "layer4")."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        nn.init.zeros_(self.layer4.weight)
        nn.init.ones_(self.layer4.bias)
        self.body = self.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2, 0, 1], [0, 0, 0, 0], [-1, 3, 2, -1]]))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer4(x)), 1))


def rand_uint8(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


# ---------------------------------------------------------------- Content Heatmap

@pytest.mark.parametrize("layer", ["layer4", "body"])  # closed form, autograd
@pytest.mark.parametrize("label", [0, 1, 2])  # uniform map; all-zero map (-> uniform); uniform
def test_ch_of_a_uniform_or_zero_map_is_the_union_area_fraction(layer, label):
    image = rand_uint8(37, 53, 0)
    boxes = [[5, 4, 20, 30], [10, 10, 40, 35]]  # 15*26 + 30*25 - 10*20 overlap = 940 pixels
    ch, clamped = content_heatmap_single(ConstantFeatures(), image, boxes, label, layer=layer)
    assert clamped == 0
    assert ch == pytest.approx(940 / (37 * 53), abs=1e-6)


def test_boxes_are_clamped_and_counted():
    image = rand_uint8(37, 53, 1)
    boxes = [[-5, -3, 20, 10], [30, 20, 70, 50], [1, 12, 3, 14]]  # -> 200 + 23*17 + 4 pixels
    ch, clamped = content_heatmap_single(ConstantFeatures(), image, boxes, 0)
    assert clamped == 2
    assert ch == pytest.approx((200 + 391 + 4) / (37 * 53), abs=1e-6)
    res = content_heatmap(ConstantFeatures(), [image, image], [boxes, boxes[2:]], [0, 0])
    assert res.clamped == 2


def test_center_crop_maps_boxes_into_the_crop():
    # 300x400 -> resize 256: 256x341, crop top 16, left round(58.5) = 58. The box
    # [200, 150, 400, 300] maps to x >= 170.5 - 58 = 112.5, y >= 128 - 16 = 112: the
    # 112x112 bottom-right quarter of the crop by pixel centres. [0, 0, 20, 300] ends
    # at x = 17.05 - 58 < 0, outside the crop.
    image = rand_uint8(300, 400, 2)
    res = content_heatmap(ConstantFeatures(), [image], [[[200, 150, 400, 300], [0, 0, 20, 300]]], [0],
                          protocol="center_crop")
    assert res.ch.tolist() == pytest.approx([0.25], abs=1e-6)
    assert res.mean_percent == pytest.approx(25.0, abs=1e-4)


def bilinear_np(a, out_h, out_w):
    """Half-pixel (align_corners=False) bilinear resampling, as cv2.resize upsamples."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    y0, y1, ly = axis(a.shape[0], out_h)
    x0, x1, lx = axis(a.shape[1], out_w)
    rows = a[y0] * (1 - ly)[:, None] + a[y1] * ly[:, None]
    return rows[:, x0] * (1 - lx) + rows[:, x1] * lx


def ch_oracle(model, image, boxes, label, short_side):
    """The authors' steps, with captum's Grad-CAM and numpy post-processing."""
    x = torch.as_tensor(image).permute(2, 0, 1).float() / 255 if image.dtype == np.uint8 else image
    h, w = x.shape[-2:]
    x = (TF.resize(x, short_side, antialias=True) - MEAN) / STD
    cam = LayerGradCam(model, model.layer4).attribute(x[None], target=label, relu_attributions=True)
    cam = cam[0, 0].detach().double().numpy()
    low = cam / (cam.sum() + 1e-8) + 1e-8
    up = bilinear_np(low, h, w)
    up /= up.sum()
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return float(up[mask].sum()), float(mask.mean())


def test_ch_equals_the_authors_steps_on_a_resnet(resnet):
    cases = [(rand_uint8(40, 60, 3), [[10, 5, 30, 25], [25, 20, 58, 39]], 1),
             (torch.rand(3, 50, 30, generator=torch.Generator().manual_seed(4)), [[0, 30, 30, 50]], 3)]
    for image, boxes, label in cases:
        expected, area = ch_oracle(resnet, image, boxes, label, short_side=64)
        assert abs(expected - area) > 1e-3  # a real, non-uniform map
        got, _ = content_heatmap_single(resnet, image, boxes, label, short_side=64)
        assert got == pytest.approx(expected, abs=1e-5)


def test_batched_ch_equals_single(resnet):
    # 40x60 and 80x120 share the resized shape 64x96; 60x40 is 96x64; one float image
    images = [rand_uint8(40, 60, 5), rand_uint8(80, 120, 6), rand_uint8(60, 40, 7),
              rand_uint8(40, 60, 8), torch.rand(3, 48, 72, generator=torch.Generator().manual_seed(9)),
              rand_uint8(52, 52, 10)]
    boxes = [[[5, 5, 30, 30]], [[10, 0, 130, 40], [50, 50, 70, 79]], [[0, 0, 40, 60]],
             [[20, 10, 50, 35]], [[0, 0, 10, 10], [60, 40, 72, 48]], [[-4, 10, 30, 60]]]
    labels = [0, 4, 2, 1, 3, 0]
    for protocol in ("resize", "center_crop"):
        single = [content_heatmap_single(resnet, im, b, y, short_side=64, protocol=protocol)
                  for im, b, y in zip(images, boxes, labels)]
        res = content_heatmap(resnet, images, boxes, labels, short_side=64, protocol=protocol, batch_size=2)
        torch.testing.assert_close(res.ch, torch.tensor([s[0] for s in single], dtype=torch.float64),
                                   rtol=0, atol=1e-6)
        assert res.clamped == sum(s[1] for s in single) == 2
        assert res.mean_percent == pytest.approx(100 * np.mean([s[0] for s in single]), abs=1e-4)


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
