"""The embedded default data set: ten classes of coloured shapes on cluttered
backgrounds, procedurally generated in ImageNet's on-disk layout.

    <root>/train/<wnid>/<wnid>_<i>.JPEG
    <root>/val/ILSVRC2012_val_<n>.JPEG          (flat, as the official tar)
    <root>/val_xml/ILSVRC2012_val_<n>.xml       (VOC-style boxes, 1-based inclusive)
    <root>/LOC_synset_mapping.txt               (wnid and name, one class a line)

Design (fixed from these criteria, not tuned for any method):
- the class lives inside the box: one object a image, the class's shape
  filled with the class's colour (each channel jittered by +-25), at a
  random position, rotation and size covering about 5-40 % of the image;
- the background never draws a class shape: a two-colour gradient, thin
  straight lines and open arcs in random colours, and pixel noise;
- no box is the whole image, so Content Heatmap (the heatmap mass inside the
  box) separates a model that looks at the object from one that does not.

`variant="context"` adds a class-correlated context cue, as in the
contextual-bias setting of Singh et al. (CVPR 2020), reference [28] of the
CGC paper: faint background stripes whose angle is the class's in 80 % of
the images (`CONTEXT_AGREEMENT`) and another class's otherwise, drawn outside
the object only. A model can lean on them, and the heatmap metrics then have
something to find.

Colour alone makes the classes learnable in a few epochs from scratch (a plain
PyTorch ResNet-18 reference: `bench/embedded_reference.py`); shape under random
colour and rotation alone was not, on a 2-core budget. Generation is seeded per
image, so a version always gives the same files; it takes seconds, runs on first
use, and is redone when a file is missing or damaged.
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

from ..errors import UserError

VERSION = 2
VARIANTS = ("plain", "context")
DATASETS = {"embedded": "plain", "embedded_context": "context"}  # --dataset name -> variant
CLASSES = [  # (wnid, name)
    ("n90000001", "disc"), ("n90000002", "square"), ("n90000003", "triangle"),
    ("n90000004", "cross"), ("n90000005", "diamond"), ("n90000006", "star"),
    ("n90000007", "hexagon"), ("n90000008", "ring"), ("n90000009", "bar"),
    ("n90000010", "arrow"),
]
COLOURS = [  # each class's object colour (RGB), well apart
    (220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200),
    (30, 200, 210), (240, 130, 20), (120, 60, 20), (250, 250, 250), (20, 20, 20),
]
TRAIN_PER_CLASS, VAL_PER_CLASS = 64, 16
SIZE_RANGE = (112, 176)
RADIUS_RANGE = (0.13, 0.3)     # object radius / short side: boxes of about 5-40 % of the image
CONTEXT_AGREEMENT = 0.8        # context variant: share of images whose stripes are their class's


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
    """Thin straight lines and open arcs (never a closed or filled shape)."""
    for _ in range(rng.integers(6, 14)):
        color = tuple(int(c) for c in rng.integers(40, 216, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, max(w, h), 4))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 3)))
        else:
            r = int(rng.integers(6, 20))
            start = float(rng.uniform(0, 360))
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + float(rng.uniform(60, 240)), fill=color, width=1)


def _stripes(img: Image.Image, cue: int, rng: np.random.Generator) -> Image.Image:
    """Faint stripes at angle cue * 18 degrees over the whole image (the context cue)."""
    w, h = img.size
    theta = math.pi * cue / len(CLASSES)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / 9.0) + rng.uniform(0, 2 * math.pi)
    wave = 28.0 * np.sign(np.sin(phase))[..., None]
    return Image.fromarray((np.asarray(img, dtype=np.float32) + wave).clip(0, 255).astype(np.uint8))


def render(class_index: int, seed: list[int], variant: str = "plain") -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One image of the class and its object box (x0, y0, x1, y1), 0-based inclusive."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(*SIZE_RANGE, 2))
    top, bottom = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    img = Image.fromarray((top * (1 - ramp) + bottom * ramp).repeat(w, 1).astype(np.uint8))
    if variant == "context":
        agree = rng.random() < CONTEXT_AGREEMENT
        cue = class_index if agree else int((class_index + rng.integers(1, len(CLASSES))) % len(CLASSES))
        img = _stripes(img, cue, rng)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, w, h)

    name = CLASSES[class_index][1]
    radius = rng.uniform(*RADIUS_RANGE) * min(w, h)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    angle = 0.0 if name in ("disc", "ring") else rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    pts = [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in _shape(name)]
    color = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in COLOURS[class_index])
    if name == "ring":
        draw.polygon(pts, outline=color, width=max(3, int(radius * 0.35)))
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


def _files(variant: str = "plain"):
    """Every file of the set: (relative path, bytes), generated deterministically."""
    yield "LOC_synset_mapping.txt", "".join(f"{w} {n}\n" for w, n in CLASSES).encode()
    for k, (wnid, _) in enumerate(CLASSES):
        for i in range(TRAIN_PER_CLASS):
            img, _box = render(k, seed=[VERSION, 0, k, i], variant=variant)
            yield f"train/{wnid}/{wnid}_{i}.JPEG", _jpeg(img)
    for n in range(VAL_PER_CLASS * len(CLASSES)):
        k = n % len(CLASSES)
        img, box = render(k, seed=[VERSION, 1, k, n], variant=variant)
        stem = f"ILSVRC2012_val_{n + 1:08d}"
        yield f"val/{stem}.JPEG", _jpeg(img)
        yield f"val_xml/{stem}.xml", voc_xml(stem, CLASSES[k][0], img.size, box).encode()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def default_cache(variant: str = "plain") -> Path:
    base = os.environ.get("CGC_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cgc_ray")
    return Path(base) / (f"embedded-v{VERSION}" if variant == "plain" else f"embedded-{variant}-v{VERSION}")


def _is_complete(root: Path) -> bool:
    try:
        index = json.loads((root / "INDEX.json").read_text())
        return all((root / rel).stat().st_size == size and zlib.crc32((root / rel).read_bytes()) == crc
                   for rel, (size, crc) in index.items())
    except (OSError, ValueError):
        return False


def ensure_embedded(root: str | os.PathLike | None = None, variant: str = "plain") -> Path:
    """The embedded set's folder (`variant` "plain" or "context"), generated
    there first if missing or damaged; default place: `default_cache(variant)`.

    Safe to call from many processes at once: each generates into a private
    temporary folder and the first complete one is moved into place.
    """
    if variant not in VARIANTS:
        raise UserError(f"embedded variant must be one of {VARIANTS}, got {variant!r}")
    root = Path(root) if root else default_cache(variant)
    if _is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    index = {}
    for rel, data in _files(variant):
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


def embedded_root(dataset: str, root: str | None = None) -> str:
    """The folder of an embedded --dataset ("embedded", "embedded_context"), generated if needed."""
    return str(ensure_embedded(root or None, variant=DATASETS[dataset]))
