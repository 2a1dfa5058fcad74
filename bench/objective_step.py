"""Time one training step (forward, backward, SGD) of each recipe on the same
model, batch and dtype, next to the CE baseline and the authors' algorithm.

Prints one JSON line per case: images/s, median step time, the ratio of the
step time to the baseline's, and peak memory. Cases are interleaved over
several rounds so that a noisy machine hits them all alike.

    python bench/objective_step.py                      # CPU-sized defaults
    python bench/objective_step.py --device cuda --arch resnet50 --batch 128 \
        --dtype bf16 --channels-last                     # the issue's GPU setting
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from authors_cgc import authors_step  # noqa: E402

from cgc_ray.gradcam import CamNet  # noqa: E402
from cgc_ray.objective import cgc_objective  # noqa: E402
from cgc_ray.transforms import crop_resize_flip, sample_crop_flip  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_batch(b, size, classes, device, channels_last):
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    crops, flips = zip(*(sample_crop_flip(size, size, rng) for _ in range(b)))
    crop, flip = torch.tensor(crops), torch.tensor(flips)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch = {k: torch.randn(b, 3, size, size, generator=g).to(device, memory_format=fmt)
             for k in ("xe", "image")}
    batch["aug"] = crop_resize_flip(batch["image"], crop, flip).contiguous(memory_format=fmt)
    batch.update(crop=crop.to(device), flip=flip.to(device),
                 label=torch.randint(classes, (b,), generator=g).to(device))
    return batch


def step_fn(case, net, batch, opt, args):
    amp = DTYPES[args.dtype]
    scaler = torch.amp.GradScaler(enabled=args.dtype == "fp16")
    recipe_batch = dict(batch, aug=batch["aug"]) if case != "two_view" else dict(
        batch, aug=crop_resize_flip(batch["xe"], batch["crop"], batch["flip"]))

    def step():
        opt.zero_grad(set_to_none=True)
        if case == "authors":
            with torch.autocast(args.device, dtype=amp, enabled=amp is not None):
                loss = authors_step(net, batch, args.lam, 0.5)[0]
        else:
            loss = cgc_objective(net, recipe_batch, lam=args.lam, tau=0.5,
                                 recipe=case, amp_dtype=amp).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, args):
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(args.device)
    return (time.perf_counter() - t0) / args.steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (closed-form path)")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=3, help="steps per timing")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", default="baseline,official,two_view,authors")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=args.classes).to(args.device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = CamNet(model)
    net_run = torch.compile(net) if args.compile else net
    # The authors' step runs on its own copy: their forward calls the layers directly.
    theirs = copy.deepcopy(model)
    opts = {m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (model, theirs)}
    batch = make_batch(args.batch, args.size, args.classes, args.device, args.channels_last)
    cases = args.cases.split(",")
    steps = {c: step_fn(c, theirs if c == "authors" else net_run, batch,
                        opts[theirs if c == "authors" else model], args) for c in cases}
    peak = {}
    for c in cases:  # warm-up (and compilation), and each case's peak memory
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps[c]()
        steps[c]()
        peak[c] = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    times = {c: [] for c in cases}
    for _ in range(args.rounds):
        for c in cases:
            times[c].append(measure(steps[c], args))
    base = statistics.median(times.get("baseline", times[cases[0]]))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    for c in cases:
        t = statistics.median(times[c])
        print(json.dumps({
            "bench": "objective_step", "case": c, "arch": args.arch, "batch": args.batch,
            "size": args.size, "dtype": args.dtype, "channels_last": args.channels_last,
            "compile": args.compile and c != "authors", "device": device_name,
            "images_per_s": round(args.batch / t, 1), "step_ms": round(t * 1e3, 1),
            "ratio_to_baseline": round(t / base, 3),
            ("peak_gpu_mem_mb" if args.device == "cuda" else "peak_rss_mb_so_far"): round(peak[c], 1),
        }))


if __name__ == "__main__":
    main()
