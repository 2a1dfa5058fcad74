"""The embedded default data set: ten classes of shapes on cluttered backgrounds,
procedurally generated in ImageNet's on-disk layout.

    <root>/train/<wnid>/<wnid>_<i>.JPEG
    <root>/val/ILSVRC2012_val_<n>.JPEG          (flat, as the official tar)
    <root>/val_xml/ILSVRC2012_val_<n>.xml       (VOC-style boxes, 1-based inclusive)
    <root>/LOC_synset_mapping.txt               (wnid and name, one class a line)

Each image holds one object at a random position, scale and rotation over
random lines, blobs and noise, so the class is decided by a small region and
a heatmap inside or outside the box means something. Generation is seeded
per image, so the same version always gives the same files; it takes about a
second, runs on first use, and is redone when a file is missing or damaged.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
CLASSES = [  # (wnid, name)
    ("n90000001", "disc"), ("n90000002", "square"), ("n90000003", "triangle"),
    ("n90000004", "cross"), ("n90000005", "diamond"), ("n90000006", "star"),
    ("n90000007", "hexagon"), ("n90000008", "ring"), ("n90000009", "bar"),
    ("n90000010", "arrow"),
]
TRAIN_PER_CLASS, VAL_PER_CLASS = 64, 16
SIZE_RANGE = (112, 176)


def _shape(name: str) -> list[tuple[float, float]]:
    """Unit-size outline of each class, centred on the origin."""
    def regular(n, r=1.0, phase=0.0):
        return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)]

    if name in ("disc", "ring"):
        return regular(40)
    if name == "square":
        return regular(4, 1.0, math.pi / 4)
    if name == "triangle":
        return regular(3, 1.0, -math.pi / 2)
    if name == "diamond":
        return [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    if name == "hexagon":
        return regular(6)
    if name == "star":
        return [p for k in range(5) for p in (regular(5, 1.0, -math.pi / 2)[k], regular(5, 0.42, -math.pi / 2 + math.pi / 5)[k])]
    if name == "cross":
        a, b = 0.3, 1.0
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if name == "bar":
        return [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]
    if name == "arrow":
        return [(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]
    raise KeyError(name)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(rng.integers(8, 20)):
        color = tuple(int(c) for c in rng.integers(40, 200, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, max(w, h), 4))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 4)))
        else:
            r = int(rng.integers(3, 12))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=color, width=1)


def render(class_index: int, seed: list[int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One image of the class and its object box (x0, y0, x1, y1), 0-based inclusive."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(*SIZE_RANGE, 2))
    top, bottom = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    img = Image.fromarray((top * (1 - ramp) + bottom * ramp).repeat(w, 1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, w, h)

    name = CLASSES[class_index][1]
    radius = rng.uniform(0.12, 0.32) * min(w, h)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    angle = 0.0 if name in ("disc", "ring") else rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    pts = [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in _shape(name)]
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    if name == "ring":
        draw.polygon(pts, outline=color, width=max(2, int(radius * 0.35)))
    else:
        draw.polygon(pts, fill=color, outline=(0, 0, 0))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    box = (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))),
           min(w - 1, math.ceil(max(xs))), min(h - 1, math.ceil(max(ys))))

    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), box


def voc_xml(stem: str, wnid: str, size: tuple[int, int], box: tuple[int, int, int, int]) -> str:
    """ImageNet's per-image box file: VOC XML with 1-based inclusive coordinates."""
    (w, h), (x0, y0, x1, y1) = size, box
    return (f"<annotation><folder>val</folder><filename>{stem}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
            f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>"
            f"</object></annotation>\n")


def _files():
    """Every file of the set: (relative path, bytes), generated deterministically."""
    yield "LOC_synset_mapping.txt", "".join(f"{w} {n}\n" for w, n in CLASSES).encode()
    for k, (wnid, _) in enumerate(CLASSES):
        for i in range(TRAIN_PER_CLASS):
            img, _box = render(k, seed=[VERSION, 0, k, i])
            yield f"train/{wnid}/{wnid}_{i}.JPEG", _jpeg(img)
    for n in range(VAL_PER_CLASS * len(CLASSES)):
        k = n % len(CLASSES)
        img, box = render(k, seed=[VERSION, 1, k, n])
        stem = f"ILSVRC2012_val_{n + 1:08d}"
        yield f"val/{stem}.JPEG", _jpeg(img)
        yield f"val_xml/{stem}.xml", voc_xml(stem, CLASSES[k][0], img.size, box).encode()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def default_cache() -> Path:
    base = os.environ.get("CGC_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cgc_ray")
    return Path(base) / f"embedded-v{VERSION}"


def _is_complete(root: Path) -> bool:
    try:
        index = json.loads((root / "INDEX.json").read_text())
        return all((root / rel).stat().st_size == size and zlib.crc32((root / rel).read_bytes()) == crc
                   for rel, (size, crc) in index.items())
    except (OSError, ValueError):
        return False


def ensure_embedded(root: str | os.PathLike | None = None) -> Path:
    """The embedded set's folder, generated there first if missing or damaged.

    Safe to call from many processes at once: each generates into a private
    temporary folder and the first complete one is moved into place.
    """
    root = Path(root) if root else default_cache()
    if _is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    index = {}
    for rel, data in _files():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        index[rel] = (len(data), zlib.crc32(data))
    (tmp / "INDEX.json").write_text(json.dumps(index))
    if _is_complete(root):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    try:
        tmp.rename(root)
    except OSError:  # lost a race to another process's rename
        shutil.rmtree(tmp, ignore_errors=True)
    return root
