"""Decoding on the training device: the views match the CPU (PIL) path for the
same parameters; odd files are made decodable; bad ones are dropped."""

import io

import numpy as np
import torch
import pytest
import torchvision.transforms.functional as F
from PIL import Image

from cgc_ray.data.device_decode import BadBatch, decode_views, device_ready
from cgc_ray.data.views import BadImage, center_view


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def picture():
    """An image whose left and right halves differ, so a wrong crop or flip shows."""
    y, x = np.mgrid[0:300, 0:400]
    arr = np.stack([x * 255 // 400, y * 255 // 300, ((x // 40 + y // 40) % 2) * 200], -1).astype(np.uint8)
    return Image.fromarray(arr)


def test_views_match_the_pil_path_for_the_same_parameters(picture):
    raw = {"jpeg": [_jpeg(picture)] * 2, "xe_box": np.array([[20, 50, 200, 180], [0, 0, 300, 400]]),
           "xe_flip": np.array([True, False]), "label": np.array([3, 4]),
           "crop": np.array([[0, 0, 10, 10]] * 2), "flip": np.array([False, True])}
    out = decode_views(raw, "official", 112, 128, "cpu")
    decoded = Image.open(io.BytesIO(raw["jpeg"][0])).convert("RGB")
    for i in range(2):
        ref = F.resized_crop(decoded, *raw["xe_box"][i].tolist(), [112, 112])
        ref = np.asarray(F.hflip(ref) if raw["xe_flip"][i] else ref, dtype=float)
        assert np.abs(out["xe"][i].numpy() - ref).mean() < 3
        assert np.abs(out["xe"][i].numpy() - ref[:, ::-1]).mean() > 10  # the flip matters: the check can fail
    ref_image = np.asarray(center_view(decoded, 128, 112), dtype=float)
    assert np.abs(out["image"][0].numpy() - ref_image).mean() < 3
    assert out["label"].tolist() == [3, 4] and out["flip"].tolist() == [False, True]


def test_cmyk_png_and_grey_become_device_decodable():
    cmyk, _, _ = device_ready(_jpeg(Image.new("CMYK", (20, 10), (255, 0, 0, 0))))
    assert Image.open(io.BytesIO(cmyk)).mode == "RGB"
    png = io.BytesIO()
    Image.new("RGB", (7, 5), (1, 2, 3)).save(png, "PNG")
    data, h, w = device_ready(png.getvalue())
    assert Image.open(io.BytesIO(data)).format == "JPEG" and (h, w) == (5, 7)
    grey = _jpeg(Image.new("L", (8, 8), 9))
    assert device_ready(grey)[0] == grey  # nvJPEG takes greyscale as it is
    with pytest.raises(BadImage):
        device_ready(b"no image")


def test_a_file_that_fails_on_the_device_is_dropped(picture):
    good = _jpeg(picture)
    raw = {"jpeg": [good, good[: len(good) // 3], good], "xe_box": np.array([[0, 0, 300, 400]] * 3),
           "xe_flip": np.zeros(3, bool), "label": np.array([0, 1, 2]), "uri": np.array(["a", "b", "c"], object)}
    failed = []
    out = decode_views(raw, "baseline", 32, 36, "cpu", on_failure=failed.extend)
    assert out["label"].tolist() == [0, 2] and out["xe"].shape == (2, 32, 32, 3)
    assert [u for u, _ in failed] == ["b"] and failed[0][1].startswith("device decode: ")
    only_bad = {**raw, "jpeg": [good[:100], b"\xff\xd8 nope"], "label": np.array([0, 1]), "uri": raw["uri"][:2]}
    with pytest.raises(BadBatch, match="no image of a batch of 2 could be decoded on the device, e.g. a"):
        decode_views(only_bad, "baseline", 32, 36, "cpu", on_failure=failed.extend)
    assert [u for u, _ in failed] == ["b", "a", "b"]


def test_pipeline_ships_bytes_and_a_training_step_runs(ray_cluster, tmp_path):
    import torchvision

    from cgc_ray.data.batches import to_device
    from cgc_ray.data.embedded import ensure_embedded
    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.pipeline import DataSettings, train_dataset
    from cgc_ray.objective import cgc_objective

    root = ensure_embedded()
    _, uri = load_or_build("embedded", str(root), "train", manifest_uri=str(tmp_path / "m.parquet"))
    ds = train_dataset(uri, "official", DataSettings(image_size=64, resize_size=72, gpu_decode=True, decode_batch=8))
    raw = next(iter(ds.iter_batches(batch_size=8, batch_format="numpy")))
    assert raw["jpeg"].dtype == object and raw["xe_box"].shape == (8, 4)
    batch = to_device(decode_views(raw, "official", 64, 72, "cpu"), "official", "cpu")
    assert batch["xe"].shape == batch["image"].shape == batch["aug"].shape == (8, 3, 64, 64)
    out = cgc_objective(torchvision.models.resnet18(num_classes=10), batch, lam=1.0)
    assert out.loss.isfinite()


def test_a_file_the_device_refuses_is_decoded_on_the_cpu_not_dropped(picture, monkeypatch):
    """A decoder that fails on chosen files (as nvJPEG does on some JPEG
    variants): those rows are decoded by the CPU path, counted, and kept."""
    import cgc_ray.data.device_decode as dd
    from cgc_ray.data.views import decode_rgb

    good, other = _jpeg(picture), _jpeg(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    refused = {len(other)}
    real = dd.decode_jpeg

    def picky(data, **kwargs):
        items = data if isinstance(data, list) else [data]
        if any(len(t) in refused for t in items):
            raise RuntimeError("nvjpeg: unsupported JPEG variant")
        return real(data, **kwargs)
    monkeypatch.setattr(dd, "decode_jpeg", picky)
    raw = {"jpeg": [good, other, good], "xe_box": np.array([[0, 0, 300, 400]] * 3), "xe_flip": np.zeros(3, bool),
           "label": np.array([0, 1, 2]), "uri": np.array(["a", "b", "c"], object)}
    failed, fell_back = [], []
    out = dd.decode_views(raw, "official", 32, 36, "cpu", on_failure=failed.extend, on_fallback=fell_back.extend)
    assert out["label"].tolist() == [0, 1, 2] and not failed and fell_back == ["b"]
    images, keep, _, fallbacks = dd._decode(raw["jpeg"], "cpu")
    cpu = torch.from_numpy(np.array(decode_rgb(other))).permute(2, 0, 1)
    assert keep == [0, 1, 2] and fallbacks == [1] and torch.equal(images[1], cpu)
