"""Images/s per CPU core of the Ray Data input pipeline for the official
recipe's views, next to torchvision ImageFolder + DataLoader doing the same
work (decode, RandomResizedCrop + flip, Resize + CenterCrop, T's parameters)
on the same files, as a ratio in one run; plus the object-store peak and the
bytes spilled. The same pipeline with `--deterministic` (Ray Data keeps the
order of its blocks) is timed alongside, as its ratio to the default.

    python bench/data_pipeline.py                       # synthetic ImageNet-sized JPEGs
    python bench/data_pipeline.py --data /data/imagenet --cores 8

Per core: the images/s of an epoch divided by --cores, the number of worker
processes each side gets: the DataLoader `cores` workers (its stock
transforms, PIL decode), Ray a local cluster of `num_cpus=cores`, so at most
`cores` decode tasks at once. Neither side's main process (the consumer; for
Ray also the streaming executor) nor Ray's own daemons (raylet, GCS, dashboard
agent, stats actors) count as cores: they run on the same machine as extra
processes, and on a machine with only `cores` CPUs they take their share of
them.

The two sides alternate epoch by epoch (after a warm-up epoch each) and the
best epoch of each is reported, so outside load hits both alike. Ray starts
its workers at nice 15; here they run at nice 0 like the DataLoader's, so a
busy machine does not starve one side only. `cpu_ms_per_image` is the CPU
time of the bench's whole process tree during an epoch per image (what a
core spends, independent of how much of the machine was free);
`ray_overhead_cpu_share` is the part of Ray's that went to the driver and
Ray's daemons rather than to the decode tasks; `first_batch_s` is the wait for
an epoch's first batch (Ray: the shuffle barrier and task start-up).
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


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds) of this process and all its descendants (Linux /proc)."""
    tick, procs = os.sysconf("SC_CLK_TCK"), {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        procs[int(d)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = {os.getpid()}, True
    while grew:
        new = {pid for pid, (parent, _, _) in procs.items() if parent in tree} - tree
        tree, grew = tree | new, bool(new)
    return {pid: procs[pid][1:] for pid in tree}


def cpu_between(before: dict, after: dict) -> dict[int, tuple[str, float]]:
    return {pid: (name, cpu - before.get(pid, ("", 0.0))[1]) for pid, (name, cpu) in after.items()}


def timed_epoch(batches) -> dict:
    """Images/s and CPU of the process tree for one pass over `batches` (an iterable of label arrays)."""
    cpu0, t0, n, first = process_cpu(), time.perf_counter(), 0, None
    for labels in batches:
        n += len(labels)
        first = first or time.perf_counter() - t0
    wall, cpu = time.perf_counter() - t0, cpu_between(cpu0, process_cpu())
    return {"images_per_s": n / wall, "cpu": cpu, "images": n, "first_batch_s": first}


def dataloader_epochs(root: Path, cores: int, batch: int):
    ds = ImageFolder(str(root / "train"), transform=CgcViews())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=cores,
                                         persistent_workers=True)
    while True:
        yield timed_epoch(label for _views, label in loader)


def ray_epochs(root: Path, cores: int, batch: int, object_store_mb: int, store: dict):
    """Timed epochs of the production pipeline, as {"ray": epoch, "ray_deterministic": epoch}
    (one after the other); `store` gets the object-store peak and spilled MiB."""
    import ray

    from cgc_ray.data.indexers import load_or_build
    from cgc_ray.data.pipeline import DataSettings, train_dataset

    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default is 15; the DataLoader's workers run at 0
    ray.init(address="local", num_cpus=cores, object_store_memory=object_store_mb * 2**20, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    _, uri = load_or_build("folder", str(root), "train")
    ds = train_dataset(uri, "official", DataSettings())
    ordered = train_dataset(uri, "official", DataSettings())
    ordered.context.execution_options.preserve_order = True  # what --deterministic sets (pipeline.data_config)
    total = ray.cluster_resources()["object_store_memory"]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            used = total - ray.available_resources().get("object_store_memory", total)
            store["peak_mb"] = max(store["peak_mb"], used / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        sides = [("ray", ds), ("ray_deterministic", ordered)]
        while True:
            yield {name: timed_epoch(b["label"] for b in d.iter_batches(
                batch_size=batch, batch_format="numpy", prefetch_batches=4)) for name, d in sides}
            sides.reverse()  # each goes first every other round
    finally:
        stop.set()
        memory = ray._private.internal_api.memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
        spilled = re.search(r"Spilled (\d+) MiB", memory)
        store["spilled_mb"] = int(spilled.group(1)) if spilled else 0
        ray.shutdown()


def overhead_share(cpu: dict) -> float:
    """Share of Ray's CPU outside the decode tasks' worker processes: the driver
    (this process) and Ray's daemons and own actors."""
    tasks = sum(c for pid, (name, c) in cpu.items()
                if name.startswith("ray::") and not name.startswith(("ray::_", "ray::Dashboard")))
    total = sum(c for _, c in cpu.values())
    return 1 - tasks / total


def summary(best: dict, cores: int) -> dict:
    cpu_s = sum(c for _, c in best["cpu"].values())
    return {"images_per_s": round(best["images_per_s"], 1),
            "images_per_s_per_core": round(best["images_per_s"] / cores, 1),
            "cpu_ms_per_image": round(1e3 * cpu_s / best["images"], 2), "first_batch_s": round(best["first_batch_s"], 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageNet-layout root (train/<wnid>/*.JPEG); default: synthetic")
    p.add_argument("--images", type=int, default=2000, help="synthetic images")
    p.add_argument("--image-size", default="500x375")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each side, alternating, after a warm-up")
    p.add_argument("--object-store-mb", type=int, default=1024)
    args = p.parse_args()
    store = {"peak_mb": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else synthetic_imagenet(
            Path(tmp), args.images, tuple(int(v) for v in args.image_size.split("x")))
        loader, ray_data = dataloader_epochs(root, args.cores, args.batch), ray_epochs(
            root, args.cores, args.batch, args.object_store_mb, store)
        next(loader), next(ray_data)  # warm-up: worker start, imports, first reads
        runs = [(next(loader), next(ray_data)) for _ in range(args.rounds)]
        ray_data.close()
    best_loader = max((r[0] for r in runs), key=lambda e: e["images_per_s"])
    best_ray = max((r[1]["ray"] for r in runs), key=lambda e: e["images_per_s"])
    best_ordered = max((r[1]["ray_deterministic"] for r in runs), key=lambda e: e["images_per_s"])
    common = {"bench": "data_pipeline", "recipe": "official", "cores": args.cores, "cpus": os.cpu_count(),
              "images": best_ray["images"], "image_size": args.image_size if not args.data else None}
    print(json.dumps({**common, "pipeline": "torch DataLoader", **summary(best_loader, args.cores)}))
    print(json.dumps({**common, "pipeline": "ray data", **summary(best_ray, args.cores),
                      "ratio_to_dataloader": round(best_ray["images_per_s"] / best_loader["images_per_s"], 3),
                      "ray_overhead_cpu_share": round(overhead_share(best_ray["cpu"]), 3),
                      "object_store_peak_mb": round(store["peak_mb"], 1), "spilled_mb": store["spilled_mb"]}))
    print(json.dumps({**common, "pipeline": "ray data --deterministic", **summary(best_ordered, args.cores),
                      "ratio_to_ray_data": round(best_ordered["images_per_s"] / best_ray["images_per_s"], 3)}))


if __name__ == "__main__":
    main()
