"""Decoding and views (Ray-free) against PIL/torchvision references and hand values."""

import io

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from cgc_ray.data.views import BadImage, decode_rgb, train_views, val_view


def _bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_greyscale_cmyk_and_png_inside_jpeg_decode_to_rgb():
    grey = decode_rgb(_bytes(Image.new("L", (20, 10), 77), "JPEG", quality=100))
    assert grey.mode == "RGB" and grey.size == (20, 10)
    assert np.abs(np.asarray(grey).astype(int) - 77).max() <= 1
    cyan = decode_rgb(_bytes(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=100))
    r, g, b = np.asarray(cyan).reshape(-1, 3).mean(0)
    assert r < 10 and g > 245 and b > 245
    pixels = np.random.default_rng(0).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    png = decode_rgb(_bytes(Image.fromarray(pixels), "PNG"))  # what ImageNet stores in a few .JPEG files
    assert np.array_equal(np.asarray(png), pixels)


@pytest.mark.parametrize("data", [b"", b"not an image at all", None], ids=["empty", "garbage", "truncated"])
def test_bad_bytes_raise_bad_image(data):
    if data is None:
        full = _bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(BadImage):
        decode_rgb(data)


def test_image_view_is_resize_then_center_crop():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    views = train_views(img, "official", 224, 256, np.random.default_rng(0))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224)])(img)
    assert np.array_equal(views["image"], np.asarray(ref))
    assert views["xe"].shape == (224, 224, 3)
    top, left, h, w = views["crop"]
    assert 0 <= top and 0 <= left and top + h <= 224 and left + w <= 224
    assert set(train_views(img, "baseline", 64, 72, np.random.default_rng(0))) == {"xe"}
    assert set(train_views(img, "two_view", 64, 72, np.random.default_rng(0))) == {"xe", "crop", "flip"}


def test_val_boxes_map_into_the_center_crop_by_hand():
    # 400x300 image -> Resize(256): 341x256 -> CenterCrop(224): left = round((341-224)/2) = 58, top = 16.
    img = Image.new("RGB", (400, 300))
    boxes = [[100.0, 30.0, 200.0, 150.0], [0.0, 0.0, 20.0, 20.0]]
    _, mapped = val_view(img, boxes, 256, 224)
    s = 256 / 300
    expected = [100 * 341 / 400 - 58, 30 * s - 16, 200 * 341 / 400 - 58, 150 * s - 16]
    assert mapped.shape == (1, 4)  # the corner box falls outside the crop
    np.testing.assert_allclose(mapped[0], expected, rtol=1e-5)
