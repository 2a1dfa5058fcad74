"""Decoding and views (Ray-free) against PIL/torchvision references and hand values."""

import io

import numpy as np
import pytest
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import cgc_ray.data.views as views_module
from cgc_ray.data.embedded import render
from cgc_ray.data.views import (
    BadImage,
    decode_rgb,
    decode_train_views,
    draft_scale,
    open_image,
    train_views,
    val_view,
)
from cgc_ray.transforms import random_resized_crop


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
    ref = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(img)).astype(int)
    # one resampling of the crop's source box instead of Resize then crop: float rounding of the
    # filter positions moves a few pixels by one grey level, nothing more
    diff = np.abs(views["image"].astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    top, left, h, w = random_resized_crop(300, 400, np.random.default_rng(0))  # the same draws as train_views
    xe = TF.resized_crop(img, top, left, h, w, [224, 224])
    flipped = np.random.default_rng(0)
    random_resized_crop(300, 400, flipped)
    assert np.array_equal(views["xe"], np.asarray(TF.hflip(xe) if flipped.random() < 0.5 else xe))  # bit-exact
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


def _photo(w, h, seed=0):
    """A JPEG with edges and texture (the embedded set's shapes on clutter), w x h."""
    img, _ = render(seed % 10, seed=[5, seed])
    return _bytes(img.resize((w, h), Image.BILINEAR), "JPEG", quality=90)


def test_draft_decode_matches_the_full_decode():
    # 1200x900: the short side allows 1/2 for Resize(256) (450 >= 256) when the crop spans >= 448 px.
    # The reduced decode averages 2x2 pixels in the DCT before the same bilinear resampling: a
    # different low-pass, same geometry. Bound: well under what moving the crop by one pixel of the
    # reduced image (2 source pixels) changes in the exact view; a misplaced box would exceed it.
    data, drafted = _photo(1200, 900), 0
    img = decode_rgb(data)
    for seed in range(12):
        draft = decode_train_views(data, "official", 224, 256, np.random.default_rng(seed))
        full = decode_train_views(data, "official", 224, 256, np.random.default_rng(seed), draft=False)
        assert np.array_equal(draft["crop"], full["crop"]) and draft["flip"] == full["flip"]
        top, left, h, w = random_resized_crop(900, 1200, np.random.default_rng(seed))
        dx = 2 if left + w + 2 <= 1200 else -2
        moved = np.asarray(img.crop((left + dx, top, left + w + dx, top + h)).resize((224, 224), Image.BILINEAR))
        exact = np.asarray(img.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR))
        shift = np.abs(moved.astype(float) - exact).mean()
        for view in ("xe", "image"):
            d = np.abs(draft[view].astype(float) - full[view])
            assert d.mean() < min(1.0, shift / 2) and np.percentile(d, 99) <= 4, (seed, view, d.mean(), shift)
        drafted += bool((draft["image"] != full["image"]).any())
    assert drafted >= 6  # most of these crops were decoded at 1/2


def test_draft_never_upsamples(monkeypatch):
    assert draft_scale(1200, 900, (447, 900), 224, 256) == 1      # the crop would map to < 224 px at 1/2
    assert draft_scale(1200, 900, (900, 900), 224, 256) == 2      # 450 >= 448; short side 450 >= 256
    assert draft_scale(1200, 900, (900, 900), 224, None) == 4     # no Resize view: the crop alone decides
    assert draft_scale(500, 375, (375, 375), 224, 256) == 1       # ImageNet-sized: the Resize view forbids it
    assert draft_scale(4000, 3000, (2000, 2000), 224, 256) == 8
    scales = []
    real = views_module.load_rgb
    monkeypatch.setattr(views_module, "load_rgb", lambda img, scale=1: scales.append(scale) or real(img, scale))
    rng = np.random.default_rng(0)
    for size in ((500, 375), (1200, 900)):
        data = _photo(*size)
        for _ in range(30):
            decode_train_views(data, "official", 224, 256, rng)
    assert set(scales[:30]) == {1}                 # ImageNet-sized: never reduced
    assert set(scales[30:]) == {1, 2}              # larger: reduced only when the crop allows it
    _, applied = real(open_image(_photo(1200, 900)), 2)
    assert applied == 2.0


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("value,expected", [(0x8080, 128), (0xFFFF, 255), (0x00FF, 0), (0x1234, 0x12)])
def test_16_bit_grey_decodes_to_its_top_8_bits_on_every_path(value, expected):
    """A 16-bit greyscale PNG (saved under a .JPEG name in the wild): Pillow
    opens it as I;16 and its convert('RGB') clips it to white."""
    from cgc_ray.data.device_decode import device_ready
    from cgc_ray.data.views import decode_rgb, decode_train_views, val_view

    data = _png(np.full((40, 40), value, dtype=np.uint16))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # what makes the case
    assert np.abs(np.asarray(decode_rgb(data)).astype(int) - expected).max() <= 1
    views = decode_train_views(data, "official", 16, 18, np.random.default_rng(0))
    for key in ("xe", "image"):
        assert np.abs(views[key].astype(int) - expected).max() <= 1, key
    image, _ = val_view(decode_rgb(data), None, 18, 16)
    assert np.abs(image.astype(int) - expected).max() <= 1
    jpeg, h, w = device_ready(data)  # re-encoded for the device decoder from the same decode
    assert (h, w) == (40, 40) and abs(np.asarray(Image.open(io.BytesIO(jpeg))).mean() - expected) <= 2


def test_32_bit_modes_scale_or_are_refused_by_name():
    from cgc_ray.data.views import BadImage, decode_rgb

    wide = Image.fromarray(np.full((8, 8), 40000, dtype=np.int32), "I")
    buf = io.BytesIO()
    wide.save(buf, "TIFF")
    assert np.asarray(decode_rgb(buf.getvalue()))[0, 0].tolist() == [156, 156, 156]  # 40000 >> 8
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), "F").save(buf, "TIFF")
    with pytest.raises(BadImage, match=r"mode F"):
        decode_rgb(buf.getvalue())
