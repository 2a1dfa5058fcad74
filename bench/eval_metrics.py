"""Time the batched Content Heatmap and insertion AUC passes against the
one-image-at-a-time protocol, on the same images and model.

Prints one JSON line per metric and mode: images/s and seconds (best of
--rounds, the passes interleaved), the speed-up of the batched pass over the
reference in the same run, and the largest difference of their per-image
results (for IAUC each pass computes its own maps, so near-equal heatmap
values may be ordered differently). Images are random, of ImageNet-like sizes, with
random boxes; the model is randomly initialised (the metrics' values do not
matter here, only their cost).

    python bench/eval_metrics.py                                   # CPU-sized defaults
    python bench/eval_metrics.py --device cuda --arch resnet50 --images 256 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

from cgc_ray.evaluation import (
    content_heatmap, content_heatmap_single, geometry, insertion_auc, insertion_auc_single, preprocess,
)

# (H, W), most common first, as in ImageNet val: images of one size form one CH batch
SIZES = [(375, 500), (500, 375), (375, 500), (333, 500), (375, 500), (500, 500), (375, 500), (500, 333)]


def make_data(n, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, boxes = [], []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        images.append(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8))
        x0, y0 = int(torch.randint(0, w // 2, (), generator=g)), int(torch.randint(0, h // 2, (), generator=g))
        boxes.append([[x0, y0, x0 + w // 3, y0 + h // 3], [x0 + 20, y0 + 10, x0 + w // 2, y0 + h // 2]])
    return images, boxes, torch.randint(classes, (n,), generator=g).tolist()


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def best_of(args, batched, single):
    """Both passes `args.rounds` times, interleaved: last outputs, best times.
    The first round also warms up (kernel selection, allocator)."""
    times = ([], [])
    for _ in range(args.rounds):
        outs = []
        for fn, ts in zip((batched, single), times):
            out, t = timed(fn, args.device)
            outs.append(out)
            ts.append(t)
    return outs, [min(ts) for ts in times]


def report(metric, n, t_batched, t_single, diff, args, device_name, **extra):
    for mode, t in (("batched", t_batched), ("single", t_single)):
        print(json.dumps({
            "bench": "eval_metrics", "metric": metric, "mode": mode, "arch": args.arch,
            "images": n, "batch": args.batch, **extra, "device": device_name,
            "images_per_s": round(n / t, 2), "seconds": round(t, 2),
            "speedup_batched_over_single": round(t_single / t_batched, 2),
            "max_abs_diff": float(f"{diff:.3g}"),
        }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=32, help="images per batch (CH; IAUC maps)")
    p.add_argument("--max-batch", type=int, default=256, help="IAUC canvases per forward")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--short-side", type=int, default=448)
    p.add_argument("--metrics", default="ch,iauc")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=args.classes).to(args.device).eval()
    images, boxes, labels = make_data(args.images, args.classes)
    n = len(images)

    if "ch" in args.metrics:
        kw = dict(short_side=args.short_side)
        (res, single), (t_b, t_s) = best_of(args, lambda: content_heatmap(
            model, images, boxes, labels, batch_size=args.batch, **kw), lambda: [
            content_heatmap_single(model, im, b, y, **kw) for im, b, y in zip(images, boxes, labels)])
        diff = (res.ch - torch.tensor([s[0] for s in single], dtype=torch.float64)).abs().max()
        buckets = len({geometry(*im.shape[:2], short_side=args.short_side).input_size for im in images})
        report("content_heatmap", n, t_b, t_s, float(diff), args, device_name, shape_buckets=buckets)

    if "iauc" in args.metrics:
        x = torch.stack([preprocess(im, geometry(*im.shape[:2], protocol="squash")) for im in images])
        kw = dict(batch_size=args.batch, max_batch=args.max_batch)
        (res, single), (t_b, t_s) = best_of(args, lambda: insertion_auc(model, x, labels, **kw), lambda: [
            insertion_auc_single(model, xi, y) for xi, y in zip(x, labels)])
        diff = (res.auc - torch.tensor([s[0] for s in single], dtype=torch.float64)).abs().max()
        report("insertion_auc", n, t_b, t_s, float(diff), args, device_name, max_batch=args.max_batch)


if __name__ == "__main__":
    main()
