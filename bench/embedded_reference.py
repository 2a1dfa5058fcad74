"""A plain PyTorch reference on the embedded data set: no Ray, no CGC.

torchvision ResNet-18 from scratch, the same cached manifests the training job
reads, RandomResizedCrop + horizontal flip for training and resize + centre
crop for validation (torchvision's transforms on PIL images), SGD with
momentum. It separates "the data set is hard" from "our pipeline is broken":
the job's baseline should reach what this reaches on the same budget.

    python bench/embedded_reference.py [--variant plain|context] [--epochs 6] [--image-size 112]

Prints one JSON line per epoch (validation top-1, seconds so far) and a last
line with the best epoch.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgc_ray.data.embedded import ensure_embedded  # noqa: E402
from cgc_ray.data.indexers import load_or_build  # noqa: E402
from cgc_ray.data.storage import StorageOptions, read_bytes  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load(variant: str, split: str, tf) -> torch.utils.data.Dataset:
    dataset = "embedded" if variant == "plain" else f"embedded_{variant}"
    manifest, _ = load_or_build(dataset, str(ensure_embedded(variant=variant)), split)
    rows = manifest.table.select(["uri", "label"]).to_pylist()
    images = [Image.open(io.BytesIO(read_bytes(r["uri"], StorageOptions()))).convert("RGB") for r in rows]
    labels = [r["label"] for r in rows]

    class Set(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return tf(images[i]), labels[i]
    return Set()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="plain")
    p.add_argument("--arch", default="resnet18", help="any torchvision classifier, from scratch")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    norm = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train = load(a.variant, "train", T.Compose([T.RandomResizedCrop(a.image_size), T.RandomHorizontalFlip(), norm]))
    val = load(a.variant, "val", T.Compose([T.Resize(round(a.image_size * 256 / 224)), T.CenterCrop(a.image_size), norm]))
    loader = torch.utils.data.DataLoader(train, batch_size=a.batch_size, shuffle=True, drop_last=True)
    model = torchvision.models.get_model(a.arch, weights=None, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.epochs * len(loader))
    started, best = time.time(), 0.0
    for epoch in range(a.epochs):
        model.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in torch.utils.data.DataLoader(val, batch_size=64))
        top1 = 100.0 * hits / len(val)
        best = max(best, top1)
        print(json.dumps({"variant": a.variant, "epoch": epoch + 1, "val_top1": round(top1, 2),
                          "seconds": round(time.time() - started, 1), "arch": a.arch, "image_size": a.image_size}), flush=True)
    print(json.dumps({"variant": a.variant, "best_val_top1": round(best, 2), "epochs": a.epochs,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
