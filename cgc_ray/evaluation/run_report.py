"""The explanation figures of a finished training run (Ray-free): validation
Content Heatmap and a Grad-CAM picture, written next to the run's checkpoints.

The training job calls `explain_checkpoint` once, on its final checkpoint, so
that every run reports how well its heatmaps sit on the objects, not only its
top-1; a sweep trial calls `checkpoint_ch` with the sweep's CH settings.
Both use the authors' CH protocol (`content_heatmap`, `protocol="resize"`);
the end-of-run pass scales the input's short side to the run: they trained at
224 and scored at a short side of 448, so a run at `image_size` scores at
2 * image_size. The full protocol, with Insertion AUC and several checkpoints,
is the evaluation job's (`jobs/evaluate.py`).
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

from ..data.indexers import child
from ..data.manifest import Manifest
from ..data.manifest import read as read_manifest
from ..data.storage import StorageOptions, read_bytes, write_bytes
from ..data.views import BadImage, decode_rgb
from ..train.checkpoint import load_model
from .content_heatmap import content_heatmap, evaluating, geometry, model_device, preprocess
from .figures import heatmap_view, panel

CAPTION = 40  # pixels under each figure cell: three lines (true class, predicted class, CH)


def boxed_rows(manifest: Manifest, limit: int | None) -> list[int]:
    """Up to `limit` rows with boxes, evenly spread over the manifest (which is
    in class order), so every checkpoint of a sweep is scored on the same images."""
    boxes = manifest.table.column("boxes").to_pylist()
    rows = [i for i, b in enumerate(boxes) if b]
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[k * len(rows) // limit] for k in range(limit)]


def load_boxed(manifest: Manifest, rows: list[int], storage: StorageOptions) -> tuple[list, list, list]:
    """(uint8 (H, W, 3) images, (n, 4) float64 boxes, labels) of `rows`; an
    unreadable image is left out (the training log already names it)."""
    if not rows:
        return [], [], []
    table = manifest.table.take(pa.array(rows, type=pa.int64())).to_pydict()

    def one(i):
        try:
            return np.array(decode_rgb(read_bytes(table["uri"][i], storage)))  # a writable copy for torch
        except (OSError, BadImage):
            return None
    with ThreadPoolExecutor(16) as pool:
        decoded = list(pool.map(one, range(len(rows))))
    kept = [i for i, im in enumerate(decoded) if im is not None]
    return ([decoded[i] for i in kept], [np.asarray(table["boxes"][i], dtype=np.float64) for i in kept],
            [table["label"][i] for i in kept])


def checkpoint_ch(checkpoint_uri: str, manifest_uri: str, *, limit: int | None = 500, short_side: int = 448,
                  protocol: str = "resize", storage: StorageOptions = StorageOptions()) -> dict:
    """{"ch": mean CH in percent (None without boxed images), "ch_images": images scored}
    of a checkpoint on at most `limit` validation images with boxes."""
    manifest = read_manifest(manifest_uri, storage)
    images, boxes, labels = load_boxed(manifest, boxed_rows(manifest, limit), storage)
    if not images:
        return {"ch": None, "ch_images": 0}
    model, meta = _model(checkpoint_uri, storage)
    result = content_heatmap(model, images, boxes, labels, layer=meta.get("layer", "layer4"),
                             protocol=protocol, short_side=short_side)
    scored = len(images) - result.unusable  # images whose boxes have no area inside them are not scored
    return {"ch": result.mean_percent if scored else None, "ch_images": scored}


def explain_checkpoint(checkpoint: str, val_manifest: str, run_uri: str, *, image_size: int,
                       max_images: int = 1000, figure_images: int = 16,
                       storage: StorageOptions = StorageOptions()) -> dict:
    """CH (percent) over at most `max_images` validation images that have
    boxes, and `<run_uri>/heatmaps.png` of the first `figure_images` of them.

    checkpoint, val_manifest, run_uri: local paths or URIs. Returns
    {"val_content_heatmap": float percent or None, "val_ch_images": int,
    "val_ch_short_side": int, "heatmaps": URI or None}. Raises OSError when the
    checkpoint or manifest cannot be read.
    """
    manifest = read_manifest(val_manifest, storage)
    images, boxes, labels = load_boxed(manifest, boxed_rows(manifest, max_images), storage)
    short_side = 2 * image_size
    result = {"val_content_heatmap": None, "val_ch_images": len(images), "val_ch_short_side": short_side,
              "heatmaps": None}
    if not images:
        return result
    model, meta = _model(checkpoint, storage)
    ch = content_heatmap(model, images, boxes, labels, layer=meta["layer"], short_side=short_side)
    result["val_ch_images"] = len(images) - ch.unusable  # no box with area inside the image: not scored
    result["val_content_heatmap"] = ch.mean_percent if result["val_ch_images"] else None
    if figure_images:
        names = class_names(manifest, storage)
        k = min(figure_images, len(images))
        picture = figure(model, meta["layer"], images[:k], boxes[:k], labels[:k], names,
                         ch.ch[:k].tolist(), short_side, image_size)
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        result["heatmaps"] = f"{run_uri.rstrip('/')}/heatmaps.png"
        write_bytes(result["heatmaps"], buf.getvalue(), storage)
    return result


def class_names(manifest: Manifest, storage: StorageOptions) -> dict[int, str]:
    """Label -> a name a reader knows: ImageNet's LOC_synset_mapping.txt next to
    the data (wnid -> first synonym) where there is one, else the manifest's class."""
    try:
        text = read_bytes(child(manifest.root, "LOC_synset_mapping.txt"), storage).decode()
        words = dict(line.strip().split(" ", 1) for line in text.splitlines() if " " in line.strip())
    except (OSError, ValueError):
        words = {}
    return {k: words.get(c, c).split(",")[0] for k, c in enumerate(manifest.classes)}


def _model(checkpoint: str, storage: StorageOptions):
    model, meta = load_model(checkpoint, storage)
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), meta


def predict(model, images, image_size: int) -> list[int]:
    """Top-1 class of each uint8 image on the validation view (resize, centre crop)."""
    resize = round(image_size * 256 / 224)
    device = model_device(model)
    x = torch.stack([preprocess(im, geometry(*im.shape[:2], "center_crop", resize=resize, crop=image_size), device)
                     for im in images])
    with evaluating(model), torch.no_grad():
        return model(x).argmax(1).tolist()


def figure(model, layer: str, images, boxes, labels, names: dict[int, str], ch: list[float],
           short_side: int, image_size: int, columns: int = 4, cell: int = 192) -> Image.Image:
    """A grid of validation images, each with the Grad-CAM of its true class
    overlaid (the map CH scores), its box in green, and under it the true and
    predicted class by name and the image's CH (in red where the prediction is wrong)."""
    predicted = predict(model, images, image_size)
    cells = []
    for image, b, label, pred, score in zip(images, boxes, labels, predicted, ch):
        view, heat, vb = heatmap_view(model, image, b, label, layer=layer, short_side=short_side)
        out = Image.new("RGB", (cell, cell + CAPTION), "white")
        out.paste(panel(view, vb, heat, cell=cell), (0, 0))
        lines = [f"true {names[label]}", f"predicted {names[pred]}",
                 "CH n/a" if math.isnan(score) else f"CH {100 * score:.0f}%"]
        draw = ImageDraw.Draw(out)
        for k, line in enumerate(lines):  # one line each, cut to the cell's width (long class names)
            while len(line) > 1 and draw.textlength(line) > cell - 6:
                line = line[:-4] + "..."
            draw.text((3, cell + 2 + 12 * k), line, fill=(0, 0, 0) if pred == label else (200, 0, 0))
        cells.append(out)
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + CAPTION)), "white")
    for i, c in enumerate(cells):
        sheet.paste(c, ((i % columns) * cell, (i // columns) * (cell + CAPTION)))
    return sheet
