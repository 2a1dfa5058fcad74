"""The training loop end to end (Ray Data -> TorchTrainer worker -> CGC step)
for one epoch, next to the same step on a fixed in-memory batch (the core
benchmark's measurement), as a ratio in one run; and the share of the loop's
time spent waiting for data.

    python bench/train_loop.py                                   # CPU, embedded data
    python bench/train_loop.py --use-gpu --arch resnet50 --batch 128 --image-size 224 --precision bf16 \
        --channels-last --synthetic 6400 --epochs 2          # ImageNet-sized JPEGs; the last epoch is timed
    python bench/train_loop.py --use-gpu ... --dataset imagenet --data s3://bucket/imagenet

The loop's figure is the last epoch's images/s on rank 0 (the first epoch
includes the input pipeline's ramp-up and cuDNN's autotuning).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from data_pipeline import synthetic_imagenet  # noqa: E402
from objective_step import make_batch  # noqa: E402

from cgc_ray.gradcam import CamNet  # noqa: E402
from cgc_ray.objective import cgc_objective  # noqa: E402
from cgc_ray.train.config import parse  # noqa: E402
from cgc_ray.train.service import run  # noqa: E402

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_only(args, device: str, classes: int) -> float:
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, num_classes=classes).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = CamNet(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = make_batch(args.batch, args.image_size, classes, device, args.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        cgc_objective(net, batch, lam=1.0, recipe=args.recipe, amp_dtype=AMP[args.precision]).loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - t0)


def synthetic_split_tree(root: Path, train: int) -> Path:
    """ImageNet-sized JPEGs (500x375) as a folder tree: `train` training images, a tenth as many for val."""
    synthetic_imagenet(root, train, (500, 375))
    synthetic_imagenet(root / "v", max(train // 10, 64), (500, 375))
    (root / "v" / "train").rename(root / "val")
    return root


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=16, help="per worker")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--recipe", default="official")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--gpu-decode", action="store_true")
    p.add_argument("--dataset", default="embedded")
    p.add_argument("--data")
    p.add_argument("--synthetic", type=int, help="generate this many ImageNet-sized training JPEGs and use them")
    p.add_argument("--epochs", type=int, default=1, help="the last one is timed")
    p.add_argument("--steps", type=int, default=10, help="steps of the step-only timing")
    args = p.parse_args()
    device = "cuda" if args.use_gpu else "cpu"

    with tempfile.TemporaryDirectory() as runs:
        if args.synthetic:
            args.dataset, args.data = "folder", str(synthetic_split_tree(Path(runs) / "data", args.synthetic))
        flags = ["--dataset", args.dataset, "--arch", args.arch, "--recipe", args.recipe, "--epochs", str(args.epochs),
                 "--num-workers", "1", "--batch-size", str(args.batch), "--image-size", str(args.image_size),
                 "--resize-size", str(args.image_size * 8 // 7), "--precision", args.precision,
                 "--val-batches", "1", "--storage-path", runs, "--name", "bench", "--log-every-steps", "1000",
                 "--cpus-per-worker", "1", "--explain-images", "0"]
        flags += ["--use-gpu"] * args.use_gpu + ["--gpu-decode"] * args.gpu_decode
        flags += ["--channels-last"] * args.channels_last + (["--data", args.data] if args.data else [])
        summary = run(parse(flags))
    alone = step_only(args, device, summary["num_classes"])
    loop = summary["train_images_per_s_rank0"]
    name = torch.cuda.get_device_name() if args.use_gpu else f"cpu x{os.cpu_count()}"
    print(json.dumps({"bench": "train_loop", "arch": args.arch, "recipe": args.recipe, "batch": args.batch,
                      "image_size": args.image_size, "precision": args.precision, "device": name,
                      "gpu_decode": args.gpu_decode, "loop_images_per_s": round(loop, 1),
                      "step_only_images_per_s": round(alone, 1), "ratio_loop_to_step_only": round(loop / alone, 3),
                      "data_wait_fraction": round(summary["data_wait_fraction_rank0"], 3),
                      "steps": summary["global_step"], "epochs": args.epochs,
                      "data": f"synthetic {args.synthetic}" if args.synthetic else args.data or args.dataset}))


if __name__ == "__main__":
    main()
