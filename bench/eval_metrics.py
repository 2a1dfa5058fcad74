"""Time the batched Content Heatmap and insertion AUC passes against the
one-image-at-a-time protocol, on the same images and model.

Prints one JSON line per metric and mode: images/s and seconds (best of
--rounds, the passes interleaved), the speed-up over the one-image reference
("single") in the same run, and the largest difference of the per-image
results from it (for IAUC each pass computes its own maps, so near-equal
heatmap values may be ordered differently). The model is randomly initialised
(the metrics' values do not matter here, only their cost).

CH modes: "batched" buckets all images by input shape (what the evaluation
job's shape-ordered CH pass gets); "batched_in_input_order" calls the same
function on consecutive chunks of --batch images, so only the images of a
chunk can share a forward (what the job did before it ordered the CH pass).

Images are JPEGs written and decoded here (decoding is not timed), in an
ImageNet-val-like mix of sizes (W x H): 500x375 most often, then 375x500,
500x333, 333x500, 500x500, and a long tail (--tail, default 15 %) of random
sizes with long side 500, nearly each its own shape bucket. The mix is our
assumption, not a measurement of ImageNet; CH batches only images of one
input shape, so the tail runs one image per forward in both passes.

    python bench/eval_metrics.py                                   # CPU-sized defaults
    python bench/eval_metrics.py --device cuda --arch resnet50 --images 512 --batch 64
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch
import torchvision
from PIL import Image

from cgc_ray.evaluation import (
    content_heatmap, content_heatmap_single, geometry, insertion_auc, insertion_auc_single, preprocess,
)

# (H, W) and share of the ImageNet-val-like mix; the rest is the random tail
HEAD = [((375, 500), 0.50), ((500, 375), 0.13), ((333, 500), 0.12), ((500, 333), 0.07), ((500, 500), 0.03)]


def sample_size(g: torch.Generator, tail: float) -> tuple[int, int]:
    """An (H, W) of the mix: the head's sizes scaled to 1 - tail, else the tail."""
    u = float(torch.rand((), generator=g))
    for size, p in HEAD:
        u -= p * (1 - tail) / sum(q for _, q in HEAD)
        if u < 0:
            return size
    short = int(torch.randint(200, 500, (), generator=g))
    return (short, 500) if float(torch.rand((), generator=g)) < 0.7 else (500, short)


def jpeg(h: int, w: int, g: torch.Generator) -> np.ndarray:
    """A photo-like (smooth plus noise) image, JPEG-encoded and decoded back."""
    low = torch.rand(3, h // 16 + 1, w // 16 + 1, generator=g)
    x = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    x = (x * 200 + torch.rand(3, h, w, generator=g) * 55).clamp(0, 255).to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(x.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
    return np.array(Image.open(buf).convert("RGB"))


def make_data(n, classes, tail=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, boxes = [], []
    for _ in range(n):
        h, w = sample_size(g, tail)
        images.append(jpeg(h, w, g))
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


def best_of(args, *passes):
    """Each pass `args.rounds` times, interleaved: last outputs, best times.
    The first round also warms up (kernel selection, allocator)."""
    times = [[] for _ in passes]
    for _ in range(args.rounds):
        outs = []
        for fn, ts in zip(passes, times):
            out, t = timed(fn, args.device)
            outs.append(out)
            ts.append(t)
    return outs, [min(ts) for ts in times]


def report(metric, n, seconds: dict, diffs: dict, args, device_name, **extra):
    """One line per mode; seconds and diffs by mode, "single" the reference."""
    for mode, t in seconds.items():
        print(json.dumps({
            "bench": "eval_metrics", "metric": metric, "mode": mode, "arch": args.arch,
            "images": n, "batch": args.batch, **extra, "device": device_name,
            "images_per_s": round(n / t, 2), "seconds": round(t, 2),
            "speedup_over_single": round(seconds["single"] / t, 2),
            "max_abs_diff_to_single": float(f"{diffs.get(mode, 0.0):.3g}"),
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
    p.add_argument("--tail", type=float, default=0.15, help="share of random-size images")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=args.classes).to(args.device).eval()
    images, boxes, labels = make_data(args.images, args.classes, args.tail)
    n = len(images)

    if "ch" in args.metrics:
        kw = dict(short_side=args.short_side, batch_size=args.batch)
        chunks = range(0, n, args.batch)
        (res, in_order, single), (t_b, t_o, t_s) = best_of(
            args, lambda: content_heatmap(model, images, boxes, labels, **kw),
            lambda: [content_heatmap(model, images[s:s + args.batch], boxes[s:s + args.batch],
                                     labels[s:s + args.batch], **kw) for s in chunks],
            lambda: [content_heatmap_single(model, im, b, y, short_side=args.short_side)
                     for im, b, y in zip(images, boxes, labels)])
        ref = torch.tensor([s[0] for s in single], dtype=torch.float64)
        diffs = {"batched": float((res.ch - ref).abs().max()),
                 "batched_in_input_order": float((torch.cat([r.ch for r in in_order]) - ref).abs().max())}
        buckets = len({geometry(*im.shape[:2], short_side=args.short_side).input_size for im in images})
        report("content_heatmap", n, {"batched": t_b, "batched_in_input_order": t_o, "single": t_s}, diffs,
               args, device_name, shape_buckets=buckets, tail=args.tail)

    if "iauc" in args.metrics:
        x = torch.stack([preprocess(im, geometry(*im.shape[:2], protocol="squash")) for im in images])
        kw = dict(batch_size=args.batch, max_batch=args.max_batch)
        (res, single), (t_b, t_s) = best_of(args, lambda: insertion_auc(model, x, labels, **kw), lambda: [
            insertion_auc_single(model, xi, y) for xi, y in zip(x, labels)])
        diff = (res.auc - torch.tensor([s[0] for s in single], dtype=torch.float64)).abs().max()
        report("insertion_auc", n, {"batched": t_b, "single": t_s}, {"batched": float(diff)}, args, device_name,
               max_batch=args.max_batch)


if __name__ == "__main__":
    main()
