"""Image geometry against torchvision itself: Resize's output size and
center_crop's offset, for sizes with odd differences and both orientations."""

import pytest
import torch
import torchvision.transforms.functional as TF

from cgc_ray.geometry import IMAGENET_MEAN, IMAGENET_STD, center_crop_offset, resize_short_side


@pytest.mark.parametrize("height,width,size", [(375, 500, 256), (500, 375, 256), (97, 131, 64), (64, 64, 73),
                                                (333, 1000, 448), (41, 40, 224)])
def test_resize_short_side_is_torchvision_resize(height, width, size):
    out = TF.resize(torch.zeros(1, height, width), size, antialias=True)
    assert resize_short_side(height, width, size) == tuple(out.shape[1:])


@pytest.mark.parametrize("height,width,crop", [(256, 341, 224), (257, 300, 224), (300, 257, 224), (225, 225, 224),
                                               (73, 90, 64)])
def test_center_crop_offset_is_torchvision_center_crop(height, width, crop):
    image = torch.arange(height * width, dtype=torch.float64).reshape(1, height, width)
    top, left = center_crop_offset(height, width, crop, crop)
    assert torch.equal(TF.center_crop(image, [crop, crop]), image[:, top:top + crop, left:left + crop])


def test_normalisation_constants_are_imagenets():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
