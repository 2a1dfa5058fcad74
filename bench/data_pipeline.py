"""Images/s per CPU core of the Ray Data input pipeline for the official
recipe's views, next to torchvision ImageFolder + DataLoader doing the same
work (decode, RandomResizedCrop + flip, Resize + CenterCrop, T's parameters)
on the same files, as a ratio in one run; plus the object-store peak and the
bytes spilled.

    python bench/data_pipeline.py                       # synthetic ImageNet-sized JPEGs
    python bench/data_pipeline.py --data /data/imagenet --limit 20000 --cores 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.datasets import ImageFolder

from cgc_ray.data.embedded import CLASSES, render
from cgc_ray.transforms import sample_crop_flip


def synthetic_imagenet(root: Path, n: int, size: tuple[int, int]) -> Path:
    """n JPEGs of about ImageNet's size (500x375 by default) in train/<wnid>/."""
    for i in range(n):
        k = i % len(CLASSES)
        img, _ = render(k, seed=[99, k, i])
        folder = root / "train" / CLASSES[k][0]
        folder.mkdir(parents=True, exist_ok=True)
        img.resize(size, Image.BILINEAR).save(folder / f"{i}.JPEG", quality=90)
    return root


class CgcViews:
    """The DataLoader side: the same views with torchvision transforms."""

    def __init__(self, size=224, resize=256):
        self.xe = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
        self.image = T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])
        self.size = size

    def __call__(self, img):
        crop, flip = sample_crop_flip(self.size, self.size, np.random.default_rng())
        return self.xe(img), self.image(img), torch.tensor(crop), flip


def time_dataloader(root: Path, cores: int, batch: int, epochs: int) -> float:
    ds = ImageFolder(str(root / "train"), transform=CgcViews())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=cores,
                                         persistent_workers=True)
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for (xe, _image, _crop, _flip), _label in loader:
            n += len(xe)
        rates.append(n / (time.perf_counter() - t0))
    return rates[-1]


def time_ray(root: Path, cores: int, batch: int, epochs: int, object_store_mb: int):
    import ray

    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.pipeline import DataSettings, train_dataset

    ray.init(address="local", num_cpus=cores, object_store_memory=object_store_mb * 2**20, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    _, uri = load_or_build("folder", str(root), "train")
    ds = train_dataset(uri, "official", DataSettings())
    total = ray.cluster_resources()["object_store_memory"]
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], total - ray.available_resources().get("object_store_memory", total))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=4):
            n += len(b["label"])
        rates.append(n / (time.perf_counter() - t0))
    stop.set()
    sampler.join()
    summary = ray._private.internal_api.memory_summary(stats_only=True)
    spilled = re.search(r"Spilled (\d+) MiB", summary)
    ray.shutdown()
    return rates[-1], peak[0] / 2**20, int(spilled.group(1)) if spilled else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageNet-layout root (train/<wnid>/*.JPEG); default: synthetic")
    p.add_argument("--images", type=int, default=600, help="synthetic images")
    p.add_argument("--image-size", default="500x375")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="the last one is timed (the first warms up)")
    p.add_argument("--object-store-mb", type=int, default=1024)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else synthetic_imagenet(
            Path(tmp), args.images, tuple(int(v) for v in args.image_size.split("x")))
        loader = time_dataloader(root, args.cores, args.batch, args.epochs)
        ray_rate, peak_mb, spilled_mb = time_ray(root, args.cores, args.batch, args.epochs, args.object_store_mb)
    common = {"bench": "data_pipeline", "recipe": "official", "cores": args.cores,
              "images": args.images if not args.data else None, "image_size": args.image_size,
              "device": f"cpu x{args.cores}"}
    print(json.dumps({**common, "pipeline": "torch DataLoader", "images_per_s": round(loader, 1),
                      "images_per_s_per_core": round(loader / args.cores, 1)}))
    print(json.dumps({**common, "pipeline": "ray data", "images_per_s": round(ray_rate, 1),
                      "images_per_s_per_core": round(ray_rate / args.cores, 1),
                      "ratio_to_dataloader": round(ray_rate / loader, 3),
                      "object_store_peak_mb": round(peak_mb, 1), "spilled_mb": spilled_mb}))


if __name__ == "__main__":
    main()
