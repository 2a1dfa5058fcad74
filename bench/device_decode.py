"""Images/s of decoding JPEGs and making the official recipe's views on the
training device (`--gpu-decode`), next to PIL on one CPU core doing the same
views, on the same synthetic ImageNet-sized JPEGs."""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch

from cgc_ray.data.device_decode import decode_views, device_ready
from cgc_ray.transforms import draw_train_params
from cgc_ray.data.embedded import CLASSES, render
from cgc_ray.data.views import decode_rgb, train_views


def jpegs(n: int, size=(500, 375)) -> list[bytes]:
    out = []
    for i in range(n):
        img, _ = render(i % len(CLASSES), seed=[7, i])
        buf = io.BytesIO()
        img.resize(size).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    data, rng = jpegs(args.images), np.random.default_rng(0)
    ready = [device_ready(d) for d in data]
    params = [draw_train_params(h, w, "official", 224, rng) for _, h, w in ready]
    raw = [{"jpeg": [r[0] for r in ready[i:i + args.batch]], "label": np.zeros(len(ready[i:i + args.batch]), int),
            **{k: np.stack([q[k] for q in params[i:i + args.batch]]) for k in params[0]}}
           for i in range(0, len(ready), args.batch)]
    for r in raw[:1]:
        decode_views(r, "official", 224, 256, args.device)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for r in raw:
        decode_views(r, "official", 224, 256, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    device_rate = args.images / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for d in data[:64]:
        train_views(decode_rgb(d), "official", 224, 256, rng)
    cpu_rate = 64 / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"bench": "device_decode", "device": name, "images": args.images, "image_size": "500x375",
                      "device_images_per_s": round(device_rate, 1), "pil_one_core_images_per_s": round(cpu_rate, 1),
                      "ratio": round(device_rate / cpu_rate, 2)}))


if __name__ == "__main__":
    main()
