"""Content Heatmap against independent oracles: hand-computed box areas, a
numpy bilinear upsampling, the authors' steps written out, and the one-image
protocol for every batched path (mixed dtypes and sizes, images without a
usable box, the box-mass step sliced to bound memory)."""

import importlib
import math

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from captum.attr import LayerGradCam
from torch import nn

from cgc_ray.evaluation import content_heatmap, content_heatmap_single

ch_module = importlib.import_module("cgc_ray.evaluation.content_heatmap")  # the package exports the function

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


def uint8(h, w, seed):
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


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


# ---------------------------------------------------------------- batched paths

def test_mixed_dtypes_no_boxes_and_sliced_mass_equal_single(resnet, monkeypatch):
    as_float = uint8(30, 45, 3).permute(2, 0, 1).float() / 255  # batched with uint8 images of its size
    images = [uint8(30, 45, 1), as_float, uint8(30, 45, 2), uint8(60, 90, 4), uint8(30, 45, 5), uint8(45, 30, 6)]
    boxes = [[[0, 0, 20, 20]], [[5, 5, 40, 25]], [], [[10, 10, 80, 50], [0, 0, 5, 5]], [[-5, -5, 10, 50]],
             [[0, 0, 30, 45]]]
    labels = [1, 2, 3, 0, 4, 1]
    single = [content_heatmap_single(resnet, im, b, y, short_side=48) for im, b, y in zip(images, boxes, labels)]
    monkeypatch.setattr(ch_module, "MAX_MASS_ELEMENTS", 2 * 30 * 45)  # slices of 2 maps of 30x45
    slices = []
    contents = ch_module.contents
    monkeypatch.setattr(ch_module, "contents", lambda cams, masks: slices.append(len(cams)) or contents(cams, masks))
    res = content_heatmap(resnet, images, boxes, labels, short_side=48, batch_size=4)
    # input 48x72: batches [0, 1, 2, 3] (30x45 in slices of 2 and 1; 60x90 alone) and [4]; 45x30: [5]
    assert slices == [2, 1, 1, 1, 1]
    expected = torch.tensor([s[0] for s in single], dtype=torch.float64)
    torch.testing.assert_close(res.ch, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert res.ch[2].isnan() and res.unusable == 1  # no box: not scored, not CH 0
    assert res.clamped == sum(s[1] for s in single) == 1


def test_an_image_whose_boxes_have_no_area_inside_it_is_not_scored(resnet):
    """Issue 14.6: a box wholly outside its image (or of zero width) would
    score CH 0; it is counted as no usable box and left out of the mean."""
    images = [uint8(30, 45, 1), uint8(30, 45, 2), uint8(30, 45, 3), uint8(30, 45, 4)]
    boxes = [[[0, 0, 20, 20]], [[50, 0, 70, 20]], [[10, 31, 20, 40]], [[5, 5, 5, 25], [0, 0, 10, 10]]]
    labels = [1, 2, 3, 0]
    res = content_heatmap(resnet, images, boxes, labels, short_side=48)
    assert res.ch[1].isnan() and res.ch[2].isnan() and res.unusable == 2
    inside = [content_heatmap_single(resnet, images[i], boxes[i], labels[i], short_side=48)[0] for i in (0, 3)]
    assert 0 < min(inside) and res.mean_percent == pytest.approx(100 * sum(inside) / 2, abs=1e-4)
    assert math.isnan(content_heatmap_single(resnet, images[1], boxes[1], 2, short_side=48)[0])
