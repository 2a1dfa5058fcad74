"""Batched Content Heatmap paths that tests/test_eval_metrics.py does not reach:
uint8 and float images of one size in one resize, images without boxes, the
box-mass step sliced to bound memory; each against the one-image protocol."""

import importlib
import math

import pytest
import torch
import torchvision

from cgc_ray.evaluation import content_heatmap, content_heatmap_single

ch_module = importlib.import_module("cgc_ray.evaluation.content_heatmap")  # the package exports the function


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def uint8(h, w, seed):
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


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
