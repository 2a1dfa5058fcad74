"""The batched heatmap/image transform against per-image torch/torchvision calls."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from torchvision.transforms import RandomResizedCrop

from cgc_ray.transforms import check_crops, crop_resize_flip, random_resized_crop, sample_crop_flip


def _draws(n, size, seed=0):
    rng = np.random.default_rng(seed)
    crops, flips = zip(*(sample_crop_flip(size, size, rng) for _ in range(n)))
    return torch.tensor(crops), torch.tensor(flips)


def test_heatmaps_match_per_image_interpolate_in_float64():
    crop, flip = _draws(16, 224)
    maps = torch.rand(16, 224, 224, dtype=torch.float64)
    got = crop_resize_flip(maps, crop, flip)
    for b in range(16):
        i, j, h, w = crop[b].tolist()
        ref = F.interpolate(maps[b, i:i + h, j:j + w][None, None], size=224, mode="bilinear")[0, 0]
        ref = ref.flip(-1) if flip[b] else ref
        torch.testing.assert_close(got[b], ref, rtol=0, atol=1e-12)


def test_images_match_torchvision_resized_crop_and_hflip():
    crop, flip = _draws(8, 64, seed=1)
    images = torch.rand(8, 3, 64, 64)
    got = crop_resize_flip(images, crop, flip)
    for b in range(8):
        ref = TF.resized_crop(images[b], *crop[b].tolist(), [64, 64], antialias=True)
        ref = TF.hflip(ref) if flip[b] else ref
        torch.testing.assert_close(got[b], ref, rtol=0, atol=2e-5)


def test_output_size_and_gradient_flow():
    maps = torch.rand(2, 1, 32, 32, requires_grad=True)
    out = crop_resize_flip(maps, torch.tensor([[0, 0, 32, 32], [4, 8, 10, 20]]),
                           torch.tensor([True, False]), size=(16, 24))
    assert out.shape == (2, 1, 16, 24)
    out.sum().backward()
    assert maps.grad[1, 0, :4].abs().sum() == 0 and maps.grad[1, 0, 4:14, 8:28].abs().sum() > 0


def test_full_crop_without_flip_is_identity():
    maps = torch.rand(3, 50, 40)
    crop = torch.tensor([[0, 0, 50, 40]] * 3)
    torch.testing.assert_close(crop_resize_flip(maps, crop, torch.zeros(3, dtype=torch.bool)), maps)
    torch.testing.assert_close(crop_resize_flip(maps, crop, torch.ones(3, dtype=torch.bool)), maps.flip(-1))


def test_sampled_crops_follow_random_resized_crop_and_flip_half_the_time():
    crop, flip = _draws(4000, 224, seed=2)
    area = crop[:, 2] * crop[:, 3] / 224**2
    aspect = crop[:, 3] / crop[:, 2]
    assert (crop[:, :2] >= 0).all() and (crop[:, 0] + crop[:, 2] <= 224).all() and (crop[:, 1] + crop[:, 3] <= 224).all()
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    assert aspect.min() >= 0.75 - 0.05 and aspect.max() <= 4 / 3 + 0.05
    # p = 0.5 (not the authors' effective 0.25): 4000 draws, 6 sigma = 0.047.
    assert abs(flip.float().mean().item() - 0.5) < 0.047


@pytest.mark.parametrize("h,w", [(224, 224), (120, 400), (500, 90)])
def test_crop_distribution_matches_torchvision(h, w):
    """Same algorithm as torchvision's RandomResizedCrop.get_params: compare the
    distributions of area fraction and aspect ratio over many draws."""
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(3000)], dtype=torch.float64)
    rng = np.random.default_rng(0)
    got = torch.tensor([random_resized_crop(h, w, rng) for _ in range(3000)], dtype=torch.float64)
    for stat in (lambda c: c[:, 2] * c[:, 3] / (h * w), lambda c: c[:, 3] / c[:, 2],
                 lambda c: (c[:, 0] + c[:, 2] / 2) / h):
        a, b = stat(got), stat(ref)
        assert abs(a.mean() - b.mean()) < 0.03 * b.mean().abs() + 0.01
        assert abs(a.std() - b.std()) < 0.08 * b.std() + 0.01


def test_same_generator_seed_same_draws():
    assert torch.equal(_draws(20, 100, seed=5)[0], _draws(20, 100, seed=5)[0])
    assert not torch.equal(_draws(20, 100, seed=5)[0], _draws(20, 100, seed=6)[0])


def test_crop_outside_the_image_is_named():
    with pytest.raises(ValueError, match=r"crop\[1\] = \[200, 0, 50, 50\].*224x224"):
        check_crops(torch.tensor([[0, 0, 10, 10], [200, 0, 50, 50]]), 224, 224)
