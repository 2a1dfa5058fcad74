"""The training loop's validation and per-epoch reporting, outside Ray: every
image scored, counts right against a plain PyTorch loop, and every collective
on the process group's device (a CUDA-only backend group on the CPU applies
NCCL's device rule: a CPU tensor in a collective fails there, as on GPUs)."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torchvision

from cgc_ray.data.batches import normalize
from cgc_ray.data.views import val_transform
from cgc_ray.gradcam import CamNet
from cgc_ray.objective import CGCConfig
from cgc_ray.train.config import TrainConfig
from cgc_ray.train.loop import rank_views, validate

SIZE = 32


class Shard:
    """Stands in for Ray Train's DataIterator over validation rows (the thing
    under test is the loop, not Ray Data): numpy batches in order."""

    def __init__(self, columns: dict):
        self.columns = columns

    def iter_batches(self, batch_size, drop_last, batch_format):
        n = len(self.columns["label"])
        stop = n - n % batch_size if drop_last else n
        for s in range(0, stop, batch_size):
            yield {k: v[s:s + batch_size] for k, v in self.columns.items()}


def shard(n: int) -> Shard:
    rng = np.random.default_rng(0)
    crops = [val_transform(f"img{i}", SIZE, 0) for i in range(n)]
    return Shard({"image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                  "label": rng.integers(0, 10, n).astype(np.int64),
                  "crop": np.array([c for c, _ in crops], dtype=np.int64),
                  "flip": np.array([f for _, f in crops], dtype=bool)})


def model():
    torch.manual_seed(0)
    return CamNet(torchvision.models.resnet18(num_classes=10))


def plain_top1(net: CamNet, columns: dict) -> float:
    """Top-1 the plain way: one eval-mode forward of all images."""
    net.model.eval()
    with torch.no_grad():
        logits = net.model(normalize(torch.from_numpy(columns["image"]), "cpu"))
    net.model.train()
    return 100.0 * float((logits.argmax(1).numpy() == columns["label"]).mean())


@pytest.mark.parametrize("n,batch", [(12, 8), (12, 4), (6, 8)])
def test_every_validation_image_is_scored(n, batch):
    data, net = shard(n), model()
    cfg = TrainConfig(val_batch_size=batch, image_size=SIZE)
    out = validate(net, data, cfg, CGCConfig(), torch.device("cpu"))
    assert out["val_images"] == n
    assert out["val_top1"] == pytest.approx(plain_top1(net, data.columns))
    if n >= batch:
        assert math.isfinite(out["val_cgc_loss"]) and out["val_cgc_loss"] > 0
    else:
        assert math.isnan(out["val_cgc_loss"])  # no full batch: no loss, not a made-up one


def test_no_image_is_nan_not_zero():
    out = validate(model(), shard(0), TrainConfig(val_batch_size=4, image_size=SIZE), CGCConfig(), "cpu")
    assert out["val_images"] == 0 and math.isnan(out["val_top1"])


def test_layer3_validation_needs_and_gets_gradients():
    """cam='auto' at a layer without the closed form resolves to autograd Grad-CAM in validation too."""
    torch.manual_seed(0)
    net = CamNet(torchvision.models.resnet18(num_classes=10), "layer3")
    out = validate(net, shard(8), TrainConfig(val_batch_size=4, image_size=SIZE),
                   CGCConfig(layer="layer3"), "cpu")
    assert out["val_images"] == 8 and math.isfinite(out["val_cgc_loss"])


def test_validation_and_reporting_under_a_cuda_only_backend(tmp_path):
    """'cuda:gloo' routes CUDA tensors only, like NCCL (the group every
    --use-gpu run gets): the loop's validation and rank views run through it
    on a GPU. Without one, the group must at least refuse a CPU tensor, which
    is what made every GPU run die at its first validation."""
    dist.init_process_group("cuda:gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
            dist.all_reduce(torch.zeros(1))
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device: the loop under a CUDA-only group runs on the GPU machine")
        net = model().cuda()
        out = validate(net, shard(12), TrainConfig(val_batch_size=8, image_size=SIZE), CGCConfig(), torch.device("cuda"))
        views = rank_views(net.model, "ab" * 28, torch.device("cuda"))
        assert out["val_images"] == 12 and views["nodes"] == ["ab" * 28]
    finally:
        dist.destroy_process_group()


def test_collectives_use_the_given_device(tmp_path, monkeypatch):
    """Under a process group, every tensor validation and the rank views hand
    to a collective is on the device the loop trains on (NCCL reduces only
    those); recorded through the real gloo group."""
    seen = []
    for name in ("all_reduce", "all_gather"):
        real = getattr(dist, name)

        def spy(*args, _real=real, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
            seen.extend(t.device for t in tensors)
            return _real(*args, **kwargs)
        monkeypatch.setattr(dist, name, spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = model()
        out = validate(net, shard(12), TrainConfig(val_batch_size=8, image_size=SIZE), CGCConfig(), torch.device("cpu"))
        views = rank_views(net.model, "ab" * 28, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert out["val_images"] == 12 and views["nodes"] == ["ab" * 28] and len(views["params_checksums"]) == 1
    assert seen and all(d == torch.device("cpu") for d in seen)
